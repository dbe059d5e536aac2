from django.apps import AppConfig
from django.db.models.signals import post_migrate


class JobsConfig(AppConfig):
    name = "project.jobs"
    label = "jobs"
    verbose_name = "Background jobs"

    def ready(self) -> None:
        from project import metrics as site_metrics
        from project.jobs import control, djangoq, metrics, overview, registry, runner, schedules

        registry.autodiscover()
        site_metrics.register_db_collector(metrics.jobs_gauges)
        overview.register_switches(overview.SwitchSource(list=control.pause_switches, flip=control.pause_switch_flip))
        post_migrate.connect(schedules.schedules_sync_on_migrate, sender=self)
        djangoq.pre_execute_connect(runner.remember_task_id)
        djangoq.pre_execute_connect(djangoq.count_taken)
