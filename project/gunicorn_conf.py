"""gunicorn settings for ``make run`` and production."""

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
    # Drop the dead worker's live gauges from the merged metrics.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
