from django.apps import AppConfig


class SecretDetectionConfig(AppConfig):
    name = "secret_detection"
    verbose_name = "Secret detection"

    def ready(self) -> None:
        from project.jobs import SwitchSource, register_backlogs, register_switches
        from project.metrics import register_db_collector
        from secret_detection import checks, console, metrics

        register_db_collector(metrics.token_status_gauges)
        register_backlogs(console.token_status_backlog)
        register_switches(SwitchSource(list=console.partner_type_switches, flip=console.partner_type_switch_flip))
        checks.register()
