"""The catalog listener's reconnect backoff: it tries again at most 5 s apart, so it is
listening again within about 5 s of PostgreSQL coming back (issue 11, defect 11)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from catalog.listener import RECONNECT_DELAYS, Listener, connect_kwargs


class _RecordingStop(threading.Event):
    """A stop event whose waits are recorded instead of slept: the test does not wait for
    the backoff to pass."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout if timeout is not None else float("inf"))
        return self.is_set()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_reconnect_backoff_is_capped_at_5_seconds() -> None:
    assert max(RECONNECT_DELAYS) == RECONNECT_DELAYS[-1] == 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_broker")  # the runs it enqueues are not for a session cluster to take
def test_the_listener_retries_every_5_seconds_during_an_outage_and_listens_again_at_its_next_attempt() -> None:
    port = _closed_port()  # nothing listens there: every attempt is refused, as during a restart
    outage_attempts = 9
    attempts = 0

    def connect() -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        real = connect_kwargs()
        return {**real, "host": "127.0.0.1", "port": port} if attempts <= outage_attempts else real

    stop = _RecordingStop()
    listener = Listener(request=stop.set, debounce=0, stop=stop, connect=connect)

    listener.run()  # returns once the catch-up request after the reconnect sets stop

    assert stop.waits == [0.5, 1, 2, 5, 5, 5, 5, 5, 5]
    assert listener.connections == 1
    assert attempts == outage_attempts + 1


def test_a_connection_attempt_to_an_unreachable_server_gives_up_instead_of_hanging() -> None:
    assert 0 < connect_kwargs()["connect_timeout"] <= 5
