from django.apps import AppConfig


class ExportsConfig(AppConfig):
    name = "exports"
    verbose_name = "Project exports"

    def ready(self) -> None:
        from exports import console, metrics
        from project.jobs import register_backlogs
        from project.metrics import register_db_collector

        register_db_collector(metrics.exports_gauges)
        register_backlogs(console.export_backlog)
