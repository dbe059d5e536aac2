from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig as BaseAdminConfig
from django.db.models.signals import post_migrate


def _create_cache_table(**kwargs) -> None:
    # The database cache (used when REDIS_URL is unset) needs its table; creating it on
    # migrate means `migrate` alone prepares a database.
    from django.core.management import call_command

    call_command("createcachetable", database=kwargs.get("using", "default"), verbosity=0)


class AdminConfig(BaseAdminConfig):
    default_site = "project.admin_site.AdminSite"


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "Platform"

    def ready(self) -> None:
        from project import metrics, schema, services  # noqa: F401 - registers the schema extensions
        from project.jobs import overview

        overview.register_switches(
            overview.SwitchSource(list=services.application_switches, flip=services.application_switch_flip)
        )
        post_migrate.connect(_create_cache_table, sender=self, dispatch_uid="project.create_cache_table")
