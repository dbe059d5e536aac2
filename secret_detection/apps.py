from django.apps import AppConfig


class SecretDetectionConfig(AppConfig):
    name = "secret_detection"
    verbose_name = "Secret detection"
