from django.db import models
from django.utils import timezone


class ProbeExecution(models.Model):
    """One execution of a probe job's body: what the toolkit tests count."""

    key = models.CharField(max_length=100)
    run_id = models.BigIntegerField()
    attempt = models.IntegerField()
    pid = models.IntegerField()
    started_at = models.DateTimeField(default=timezone.now)

    class Meta:
        app_label = "test_support"

    def __str__(self) -> str:
        return f"{self.key} run {self.run_id} attempt {self.attempt}"
