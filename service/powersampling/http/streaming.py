"""Server-sent events: the encoding of one event, and the response of a streamed call, whose writes
are bounded by the call's `CallBounds` (stream_idle_timeout_s, stream_max_age_s).

uvicorn's send waits while the connection's write buffer is over its high-water mark, that is while
the client reads nothing and TCP's buffers are full; so a send still waiting after
stream_idle_timeout_s means a stalled client (a slow model sends nothing, and is never timed). When
the call expires, stalled or older than stream_max_age_s, the task writing the stream is cancelled:
closing the body's generator closes the serving core's, which stops the sampling and frees the
admission slot at once. Then the expiry's error event (`data: {"error": {...}}`) is sent after what
the client has not read yet, and the response ends without `[DONE]`. A stalled client sees it
when it reads again; a connection that goes first ends the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Mapping

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Send

from powersampling.errors import PowerSamplingError
from powersampling.serving.bounds import CallBounds


def sse_data(model: BaseModel) -> str:
    """One SSE event carrying `model` as compact JSON."""
    return f"data: {json.dumps(model.model_dump(mode='json'), separators=(',', ':'))}\n\n"


class BoundedEventStream(StreamingResponse):
    """An SSE response whose every send is bounded; an expired call ends with `error_event(error)`."""

    def __init__(
        self,
        content: AsyncGenerator[str, None],
        *,
        bounds: CallBounds,
        error_event: Callable[[PowerSamplingError], str],
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._chunks = content
        self._bounds = bounds
        self._error_event = error_event

    async def stream_response(self, send: Send) -> None:
        task = asyncio.current_task()
        bounds = self._bounds
        bounds.follow(task)
        started = False
        try:
            try:
                with bounds.sending():
                    await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                started = True
                async with contextlib.aclosing(self._chunks) as chunks:  # its work stops with the response
                    async for chunk in chunks:
                        with bounds.sending():
                            await send(_body(chunk))
            except asyncio.CancelledError:
                if bounds.expired is None or task is None:
                    raise  # the client went away, or the server stops
                task.uncancel()
                if not started:
                    await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                # Waits for the client to read past what it has not read, or for its connection to go.
                await send(_body(self._error_event(bounds.expired)))
        finally:
            bounds.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _body(chunk: str) -> dict[str, object]:
    return {"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True}


__all__ = ["BoundedEventStream", "sse_data"]
