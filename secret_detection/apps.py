from django.apps import AppConfig


class SecretDetectionConfig(AppConfig):
    name = "secret_detection"
    verbose_name = "Secret detection"

    def ready(self) -> None:
        from project.metrics import register_db_collector
        from secret_detection import checks, metrics

        register_db_collector(metrics.token_status_gauges)
        checks.register()
