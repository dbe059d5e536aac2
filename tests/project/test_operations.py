"""Health endpoints, metrics from worker processes, and configuration errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from project.jobs.models import ClusterHeartbeat
from tests.support import jobs as probes
from tests.support.cluster import ROOT, running_cluster, wait_for


@pytest.mark.django_db
def test_readiness_fails_without_a_live_cluster(client) -> None:
    ClusterHeartbeat.objects.all().delete()
    response = client.get("/-/readiness")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failed"
    assert body["db_check"][0]["status"] == "ok"
    assert body["cluster_check"][0]["status"] == "failed"


def _heartbeat(broker: str, key: str) -> ClusterHeartbeat:
    return ClusterHeartbeat.objects.create(key=key, cluster_name="elsewhere", host="h", pid=1, broker=broker)


def _other(broker: str) -> str:
    return "redis" if broker == "orm" else "orm"


@pytest.mark.django_db
def test_readiness_fails_when_the_live_clusters_use_another_broker(client, settings) -> None:
    ClusterHeartbeat.objects.all().delete()
    _heartbeat(_other(settings.JOBS_BROKER), "h:1")

    response = client.get("/-/readiness")

    assert response.status_code == 503
    check = response.json()["cluster_check"][0]
    assert check["status"] == "failed"
    assert check["message"] == f"no live job cluster uses this server's broker ({settings.JOBS_BROKER})"


@pytest.mark.django_db
def test_readiness_counts_the_live_clusters_on_this_servers_broker(client, settings) -> None:
    ClusterHeartbeat.objects.all().delete()
    _heartbeat(_other(settings.JOBS_BROKER), "h:1")
    _heartbeat(settings.JOBS_BROKER, "h:2")

    response = client.get("/-/readiness")

    assert response.status_code == 200
    assert response.json()["cluster_check"][0]["clusters"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_cluster_starting_beside_one_on_another_broker_says_so(settings) -> None:
    ClusterHeartbeat.objects.all().delete()
    other = _other(settings.JOBS_BROKER)
    _heartbeat(other, "elsewhere:1")
    with running_cluster(broker=settings.JOBS_BROKER) as cluster:
        wait_for(lambda: "use another broker" in cluster.output(), message=cluster.output)
    (line,) = [line for line in cluster.output().splitlines() if "use another broker" in line]
    assert "ERROR" in line
    assert other in line
    assert "elsewhere:1" in line


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_readiness_is_ok_with_a_live_cluster(client, cluster) -> None:
    response = wait_for(lambda: (r := client.get("/-/readiness")).status_code == 200 and r, timeout=10)
    assert response.json()["cluster_check"][0]["clusters"] >= 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_metrics_recorded_in_worker_processes_are_served(client, tmp_path, monkeypatch, settings) -> None:
    from project.jobs.models import JobRun

    with running_cluster(broker=settings.JOBS_BROKER, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}):
        run = probes.ok.enqueue(key="metrics")
        wait_for(lambda: JobRun.objects.get(pk=run.pk).status == "succeeded", message="job did not run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body = client.get("/metrics").content.decode()
    assert 'jobs_finished_total{job="probe.ok",outcome="succeeded"} 1.0' in body
    assert 'jobs_started_total{job="probe.ok"} 1.0' in body
    assert "jobs_duration_seconds_bucket" in body
    assert "jobs_clusters_alive" in body


@pytest.mark.django_db
def test_metrics_include_queue_gauges_from_the_database(client) -> None:
    probes.ok.enqueue(key="waiting")
    body = client.get("/metrics").content.decode()
    assert 'jobs_runs{job="probe.ok",status="queued"} 1.0' in body
    assert "jobs_oldest_due_age_seconds" in body


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Q_WORKERS", "many", "Q_WORKERS='many' is invalid: expected an integer"),
        ("DATABASE_URL", "mysql://db/app", "DATABASE_URL is invalid: only PostgreSQL is supported"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is invalid: expected one of json, text"),
        ("EXPORT_RETRY_DELAYS", "4,x", "EXPORT_RETRY_DELAYS='4,x' is invalid"),
        ("ENCRYPTION_KEY", "not-a-key", "ENCRYPTION_KEY=<hidden> is invalid"),
        ("REDIS_URL", "http://redis", "REDIS_URL=<hidden> is invalid"),
    ],
)
def test_an_invalid_environment_value_stops_start_up_with_one_line(name, value, expected) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgres://u@127.0.0.1:1/x", "DEBUG": "1", name: value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ")
    assert expected in lines[0]
    if name == "ENCRYPTION_KEY":
        assert value not in result.stderr


def test_secret_key_is_required_unless_debug() -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgres://u@127.0.0.1:1/x", "DEBUG": "0"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: SECRET_KEY is required unless DEBUG=1"
