"""seed_demo and create_access_token; manage.py's split of results (stdout) and logs (stderr)."""

from __future__ import annotations

import importlib.util
import os
import pty
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from project import services
from project.models import AccessLevel, AccessToken, Issue, Label, Note, Project, ProjectMember

pytestmark = pytest.mark.django_db


def test_seed_demo_creates_projects_with_members_in_every_role_and_is_idempotent() -> None:
    call_command("seed_demo", projects=2, issues=4, notes=2, stdout=StringIO())
    projects = Project.objects.filter(namespace_path="demo")
    assert projects.count() == 2
    project = projects.first()
    levels = set(ProjectMember.objects.filter(project=project).values_list("access_level", flat=True))
    assert levels == {level.value for level in AccessLevel}
    assert Label.objects.filter(project=project).count() == 5
    assert Issue.objects.filter(project=project).count() == 4
    assert Note.objects.filter(issue__project=project).count() == 8
    assert Issue.labels.through.objects.filter(issue__project=project).count() == 8
    counts = (Project.objects.count(), Issue.objects.count(), Note.objects.count(), Label.objects.count())
    call_command("seed_demo", projects=2, issues=4, notes=2, stdout=StringIO())
    assert (Project.objects.count(), Issue.objects.count(), Note.objects.count(), Label.objects.count()) == counts
    call_command("seed_demo", projects=2, issues=6, notes=2, stdout=StringIO())
    assert Issue.objects.filter(project=project).count() == 6


def test_seed_demo_refuses_negative_counts() -> None:
    with pytest.raises(CommandError, match="--issues must be 0 or more"):
        call_command("seed_demo", issues=-1)


def test_create_access_token_prints_the_token_last_and_nothing_else_secret(owner) -> None:
    out, err = StringIO(), StringIO()
    call_command("create_access_token", "owner", scopes="api,read_api", expires_days=7, stdout=out, stderr=err)
    lines = out.getvalue().strip().splitlines()
    value = lines[-1]
    token = services.access_token_authenticate(value=value)
    assert token.user == owner
    assert sorted(token.scopes) == ["api", "read_api"]
    assert token.expires_at is not None
    assert value not in err.getvalue()
    assert AccessToken.objects.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "no active user named 'nobody'"),
        (["owner", "--scopes", "sudo"], "unknown: sudo"),
        (["owner", "--expires-days", "0"], "--expires-days must be at least 1"),
    ],
)
def test_create_access_token_rejects_bad_input(owner, args, message) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_access_token", *args)
    assert not AccessToken.objects.exists()


# --- manage.py: results on stdout, log lines on stderr, quiet in a terminal --------------

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"
PROBE = (
    "import logging; log = logging.getLogger('probe'); "
    "log.info('probe-info-line'); log.warning('probe-warning-line'); print('probe-result')"
)


def _manage_module():
    spec = importlib.util.spec_from_file_location("manage_entry", MANAGE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manage_py(*args: str, stderr_tty: bool, log_level: str | None = None) -> tuple[str, str]:
    """Run manage.py in a subprocess, its stderr a pseudo-terminal or a pipe; (stdout, stderr)."""
    env = {key: value for key, value in os.environ.items() if key != "LOG_LEVEL"}
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if log_level is not None:
        env["LOG_LEVEL"] = log_level
    command = [sys.executable, str(MANAGE), *args]
    if not stderr_tty:
        done = subprocess.run(command, cwd=MANAGE.parent, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, cwd=MANAGE.parent, env=env, stdout=subprocess.PIPE, stderr=follower)
    finally:
        os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    stdout = process.stdout.read().decode()
    process.stdout.close()
    assert process.wait(timeout=60) == 0, b"".join(chunks)
    return stdout, b"".join(chunks).decode()


def test_a_command_in_a_terminal_logs_warnings_only_and_its_result_stays_on_stdout() -> None:
    if _manage_module()._env_file_sets(MANAGE.parent / ".env", "LOG_LEVEL"):
        pytest.skip("this checkout's .env sets LOG_LEVEL")
    out, err = _manage_py("shell", "-v", "0", "-c", PROBE, stderr_tty=True)
    assert out.strip() == "probe-result"
    assert "probe-warning-line" in err
    assert "probe-info-line" not in err


def test_log_level_set_in_the_environment_wins_in_a_terminal() -> None:
    _, err = _manage_py("shell", "-v", "0", "-c", PROBE, stderr_tty=True, log_level="info")
    assert "probe-info-line" in err


def test_a_command_whose_stderr_is_not_a_terminal_keeps_info_logs_on_stderr_only() -> None:
    out, err = _manage_py("shell", "-v", "0", "-c", PROBE, stderr_tty=False)
    assert out.strip() == "probe-result"
    assert "probe-info-line" in err
    assert "probe-warning-line" in err


@pytest.mark.parametrize("command", ["qcluster", "catalog_listen", "runserver"])
def test_services_keep_their_log_level_in_a_terminal(command, tmp_path) -> None:
    manage = _manage_module()
    assert not manage.quiet_logs(["manage.py", command], {}, True, env_file=tmp_path / ".env")
    assert manage.quiet_logs(["manage.py", "export_project"], {}, True, env_file=tmp_path / ".env")


def test_quiet_logs_only_for_a_terminal_without_a_configured_log_level(tmp_path) -> None:
    manage = _manage_module()
    env_file = tmp_path / ".env"
    argv = ["manage.py", "jobs_status"]
    assert manage.quiet_logs(argv, {}, True, env_file=env_file)
    assert manage.quiet_logs(["manage.py"], {}, True, env_file=env_file)  # help
    assert not manage.quiet_logs(argv, {}, False, env_file=env_file)  # cron, pipes, files
    assert not manage.quiet_logs(argv, {"LOG_LEVEL": "debug"}, True, env_file=env_file)
    env_file.write_text("# LOG_LEVEL=debug\nLOG_LEVEL=\n")
    assert manage.quiet_logs(argv, {}, True, env_file=env_file)  # commented out or empty
    env_file.write_text("export LOG_LEVEL=debug\n")
    assert not manage.quiet_logs(argv, {}, True, env_file=env_file)  # the operator's .env is obeyed


def test_every_log_handler_writes_to_stderr(settings) -> None:
    for handler in settings.LOGGING["handlers"].values():
        assert handler["class"] == "logging.StreamHandler"
        assert handler.get("stream", "ext://sys.stderr") == "ext://sys.stderr"  # StreamHandler's default
