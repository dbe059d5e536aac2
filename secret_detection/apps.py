from django.apps import AppConfig


class SecretDetectionConfig(AppConfig):
    name = "secret_detection"
    verbose_name = "Secret detection"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from project.jobs import SwitchSource, register_backlogs, register_switches
        from project.metrics import register_db_collector
        from secret_detection import checks, console, metrics
        from secret_detection.services import callbacks

        # A callback refused during a database outage is written once the process connects again.
        connection_created.connect(callbacks.callback_refusals_flush_on_connect, dispatch_uid="sd-callback-refusals")

        register_db_collector(metrics.token_status_gauges)
        register_backlogs(console.token_status_backlog)
        register_switches(SwitchSource(list=console.partner_type_switches, flip=console.partner_type_switch_flip))
        register_backlogs(console.direct_partner_backlog)
        register_switches(SwitchSource(list=console.direct_partner_switches, flip=console.direct_partner_switch_flip))
        checks.register()
