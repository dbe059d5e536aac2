from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "catalog"
    verbose_name = "CI catalog"

    def ready(self) -> None:
        from catalog import console, metrics, services
        from project import metrics as site_metrics
        from project import services as project_services
        from project.jobs import register_backlogs

        site_metrics.register_db_collector(metrics.catalog_gauges)
        register_backlogs(console.catalog_backlog)
        project_services.register_project_update_hook(services.catalog_project_updated)
