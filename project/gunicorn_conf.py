"""gunicorn settings for ``make run`` and production."""

import errno
import os

from gunicorn.glogging import Logger

worker_class = "gthread"
# Threads let a worker stream an export download without blocking its other requests.
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = int(os.environ.get("WEB_TIMEOUT", "60"))
graceful_timeout = 20
# One per run would clash between two instances on a machine; nothing here uses it.
control_socket_disable = True
accesslog = "-"
# The path without its query string (%(U)s, not the request line %(r)s): a query may carry
# a signed upload URL (upload[url]=…) or an admin search term (?q=…), which must not reach
# the log. Nor does the Referer (%(f)s), which would repeat them.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss request_id=%({x-request-id}o)s'


class RedactingLogger(Logger):
    """gunicorn's logger with the site's ``RedactFilter`` on its error and access logs:
    gunicorn's own messages quote the request target ("Error handling request GET
    /path?query"), and a changed access_log_format would too."""

    def setup(self, cfg):
        super().setup(cfg)
        from project.logs import RedactFilter

        for log in (self.error_log, self.access_log):
            if not any(isinstance(each, RedactFilter) for each in log.filters):
                log.addFilter(RedactFilter())


logger_class = RedactingLogger


def child_exit(server, worker):
    from project import probes

    probes.worker_exited(worker.pid)  # its readiness report no longer counts
    # Drop the dead worker's live gauges from the merged metrics.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# --- health probes on a port of their own (project/probes.py) ----------------------------
# On the web port the probes wait behind ordinary requests; on WEB_PROBE_PORT a thread of the
# master answers them, from readiness reports its workers publish every second. 0 turns it
# off. Set explicitly, a port that cannot be bound stops start-up; the default one, taken (a
# second server on the machine), only logs a warning. (project.* is imported in the hooks:
# gunicorn reads this file before it changes to --chdir.)


def _probe_host(server) -> str:
    """The host of the first ``--bind`` address: the probes listen where the site does."""
    for address in server.cfg.address:
        if isinstance(address, tuple):
            return address[0] or "0.0.0.0"  # noqa: S104 - as the site's own bind
    return "127.0.0.1"  # a unix socket: probes from this machine only


def on_starting(server):
    from project import probes
    from project.env import env_int, env_str, load_site_env_files

    load_site_env_files()  # .env, as the settings read it (defaults under the process environment)
    port = env_int("WEB_PROBE_PORT", 8001, minimum=0, maximum=65535)
    if not port:
        return
    host = _probe_host(server)
    try:
        probes.master_start(host=host, port=port, workers=lambda: len(server.WORKERS))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or env_str("WEB_PROBE_PORT"):
            raise
        server.log.warning("health probes: port %s is in use; probes only on the web port", port)
        return
    server.log.info("health probes on http://%s:%s/-/liveness and /-/readiness", host, port)


def post_fork(server, worker):
    from project import probes

    probes.worker_forked()


def post_worker_init(worker):
    from project import probes

    probes.worker_start()
    # gunicorn's "Booting worker" comes at the fork, before the application loads: until
    # this line a worker accepts no connection (the others take them all, keep-alive ones
    # for good).
    worker.log.info("Worker serving (pid: %s)", worker.pid)


def on_exit(server):
    from project import probes

    probes.master_stop()
