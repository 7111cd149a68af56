"""Admission control: at most `max_concurrent` requests sample at once, at most `max_queue` wait.

Beyond that a request is refused at once (RESOURCE_EXHAUSTED), so a burst costs a bounded amount of
memory and the requests already admitted keep their latency. Waiting requests are served in
arrival order; one whose caller goes away leaves the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

from powersampling.serving.errors import ServerOverloaded


def _ignore(_: object) -> None:
    pass


class AdmissionControl:
    """A FIFO semaphore with a bounded queue.

    `on_queue_depth(depth)` is called whenever the number of waiting requests changes and
    `on_rejection(reason)` for every refused request (telemetry hooks).
    """

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        *,
        on_queue_depth: Callable[[int], None] = _ignore,
        on_rejection: Callable[[str], None] = _ignore,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_queue_depth = on_queue_depth
        self._on_rejection = on_rejection

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the concurrent slots for the body; raises ServerOverloaded when full."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._running < self.max_concurrent and not self._waiters:
            self._running += 1
            return
        if len(self._waiters) >= self.max_queue:
            self._on_rejection("queue_full")
            raise ServerOverloaded(
                f"server at capacity ({self._running} requests running, {len(self._waiters)} waiting); "
                "retry later"
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._on_queue_depth(len(self._waiters))
        try:
            await waiter  # `_release` hands its slot over by resolving this future
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot arrived as the caller left: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._on_queue_depth(len(self._waiters))
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter: `_running` is unchanged
                self._on_queue_depth(len(self._waiters))
                return
        self._running -= 1


__all__ = ["AdmissionControl"]
