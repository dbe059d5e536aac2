"""gunicorn settings for ``make run`` and production."""

import os

worker_class = "gthread"
# Threads let a worker stream an export download without blocking its other requests.
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = int(os.environ.get("WEB_TIMEOUT", "60"))
graceful_timeout = 20
# One per run would clash between two instances on a machine; nothing here uses it.
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss request_id=%({x-request-id}o)s'


def child_exit(server, worker):
    # Drop the dead worker's live gauges from the merged metrics.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
