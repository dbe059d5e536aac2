from django.apps import AppConfig
from django.db.models.signals import post_migrate


class JobsConfig(AppConfig):
    name = "project.jobs"
    label = "jobs"
    verbose_name = "Background jobs"

    def ready(self) -> None:
        from django_q.signals import pre_execute

        from project.jobs import control, overview, registry, runner, schedules

        registry.autodiscover()
        overview.register_switches(overview.SwitchSource(list=control.pause_switches, flip=control.pause_switch_flip))
        post_migrate.connect(schedules.schedules_sync_on_migrate, sender=self)
        pre_execute.connect(runner.remember_task_id, dispatch_uid="jobs.remember_task_id")
