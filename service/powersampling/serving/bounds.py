"""The server's bounds on one call's time, whatever the transport: its age and each send's wait.

A client that stops reading blocks the call's writes once the transport's flow control is full (gRPC's
window, TCP's buffers under HTTP). `CallBounds.sending()` wraps each write: one still blocked after
`stream_idle_timeout_s` ends the call (`StreamStalled`), and a call older than `stream_max_age_s`
ends too (`DeadlineExceeded`). Ending means: the error is recorded (`expired`) and logged, the
transport's `on_expired` hook runs (to queue its status for the client), and the task that runs the
call is cancelled, which closes the core's generator: the sampling stops, its engine requests are
cancelled and the admission slot is freed now, whether or not the client ever reads again. The
cache's checkpoints stay, so the same request sent again resumes.

Only a blocked write counts as idle: while the model works and nothing is being sent, the idle
clock does not run, so a slow model is never taken for a stalled client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from powersampling.config import ServerConfig
from powersampling.errors import PowerSamplingError
from powersampling.serving.errors import DeadlineExceeded, StreamStalled

logger = logging.getLogger("powersampling.server")


def _ignore(_: PowerSamplingError) -> None:
    pass


class CallBounds:
    """Watches one call: started with the call, in the task that runs it; `close()` when it ends.

    `follow(task)` moves the watch to another task (a transport that writes its stream from a task
    of its own); with `follow(None)` an expiry is only recorded, and the next `follow` acts on it.
    """

    def __init__(
        self,
        config: ServerConfig,
        request_id: str,
        *,
        on_expired: Callable[[PowerSamplingError], None] = _ignore,
    ) -> None:
        self._idle_timeout_s = config.stream_idle_timeout_s
        self._request_id = request_id
        self._on_expired = on_expired
        self._task: asyncio.Task[object] | None = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._idle: asyncio.TimerHandle | None = None
        self._age: asyncio.TimerHandle | None = None
        self._closed = False
        self.expired: PowerSamplingError | None = None
        max_age = config.stream_max_age_s
        if max_age is not None:
            self._age = self._loop.call_later(
                max_age,
                self._expire,
                DeadlineExceeded(
                    f"stream: the call ran longer than the server's stream_max_age_s of {max_age:g} s "
                    f"(request {request_id})"
                ),
            )

    def follow(self, task: asyncio.Task[object] | None) -> None:
        """Cancel `task` (not the one that started the call) when the call expires."""
        self._task = task
        if task is not None and self.expired is not None and not task.done():
            task.cancel()

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Bound one write: still blocked after stream_idle_timeout_s, the call ends."""
        timeout = self._idle_timeout_s
        self._idle = self._loop.call_later(
            timeout,
            self._expire,
            StreamStalled(
                f"stream: the client read nothing for {timeout:g} s (the server's "
                f"stream_idle_timeout_s); the call was ended to free its slot (request {self._request_id})"
            ),
        )
        try:
            yield
        finally:
            self._idle.cancel()
            self._idle = None

    def _expire(self, error: PowerSamplingError) -> None:
        if self.expired is not None or self._closed:
            return
        if self._task is not None and self._task.done():
            return
        self.expired = error
        logger.warning("%s", error)
        try:
            self._on_expired(error)
        finally:
            if self._task is not None:
                self._task.cancel()

    def close(self) -> None:
        """The call has ended: no bound applies any more."""
        self._closed = True
        for handle in (self._idle, self._age):
            if handle is not None:
                handle.cancel()


__all__ = ["CallBounds"]
