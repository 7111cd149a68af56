"""The OpenAI-compatible HTTP API: the FastAPI app over the serving core, run by uvicorn in the
gRPC server's process and event loop (same engine, cache, admission and telemetry).

    http = await HttpServer.start(core, config)   # listens on config.http_host:http_port
    ...
    await http.stop(drain_timeout_s)               # stop accepting, let streams finish, then close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from powersampling.config import ServerConfig
from powersampling.errors import InvalidArgument
from powersampling.http.errors import RequestError, error_response, http_error
from powersampling.http.router import router
from powersampling.http.serving_chat import OpenAIServingChat
from powersampling.http.serving_completion import OpenAIServingCompletion
from powersampling.serving.core import ServingCore

logger = logging.getLogger("powersampling.http")


def build_app(core: ServingCore, config: ServerConfig) -> FastAPI:
    """The FastAPI app of the HTTP API on `core`."""
    app = FastAPI(title="powersampling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.core = core
    app.state.started = time.time()
    app.state.draining = False
    app.state.serving_chat = OpenAIServingChat(core, max_body_bytes=config.max_message_bytes)
    app.state.serving_completion = OpenAIServingCompletion(core, max_body_bytes=config.max_message_bytes)
    app.include_router(router)

    @app.exception_handler(Exception)
    async def _any_error(_request: Request, exc: Exception) -> Response:
        return error_response(http_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        param = "path" if exc.status_code == 404 else "method" if exc.status_code == 405 else None
        return error_response(http_error(RequestError(exc.status_code, str(exc.detail), param)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(http_error(InvalidArgument("body", str(exc))))

    # http.* server spans beside the gRPC ones, when the telemetry can make them.
    instrument = getattr(core.telemetry, "instrument_http_app", None)
    if callable(instrument):
        instrument(app)
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the process's handlers stop both listeners together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """The HTTP API listening beside the gRPC server."""

    def __init__(
        self, server: _EmbeddedServer, task: asyncio.Task[None], sock: socket.socket, app: FastAPI
    ) -> None:
        self._server = server
        self._task = task
        self._socket = sock
        self.app = app
        self.port: int = sock.getsockname()[1]

    @classmethod
    async def start(cls, core: ServingCore, config: ServerConfig) -> HttpServer:
        """Bind `config.http_host` (default: `config.host`) and `config.http_port`, then serve."""
        assert config.http_port is not None
        host = config.http_host or config.host
        sock = _bind(host, config.http_port)
        app = build_app(core, config)
        uv_config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,  # the serving core writes one access line per call
            lifespan="off",
            timeout_graceful_shutdown=max(math.ceil(config.drain_timeout_s), 1),
            timeout_keep_alive=int(config.keepalive_time_s),
            server_header=False,
        )
        server = _EmbeddedServer(uv_config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="powersampling-http")
        while not server.started:
            if task.done():  # failed to start: raise what it raised
                await task
                raise InvalidArgument(
                    "http_port", f"the HTTP API could not listen on {host}:{config.http_port}"
                )
            await asyncio.sleep(0.01)
        logger.info("HTTP API listening on %s:%d", host, sock.getsockname()[1])
        return cls(server, task, sock, app)

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop accepting, let in-flight requests and streams finish for up to `drain_timeout_s`, then
        cancel what is left (which stops its engine work)."""
        self.app.state.draining = True
        self._server.config.timeout_graceful_shutdown = max(math.ceil(drain_timeout_s), 1)
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s + 5.0)
        if not self._task.done():
            self.force()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def force(self) -> None:
        """Stop now: in-flight requests are cancelled."""
        self.app.state.draining = True
        self._server.should_exit = True
        self._server.force_exit = True
        for task in list(self._server.server_state.tasks):
            task.cancel()
        for connection in list(self._server.server_state.connections):
            connection.shutdown()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio then turns Nagle off on accepted connections (it checks the proto);
    # with proto 0 a keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise InvalidArgument("http_port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


__all__ = ["HttpServer", "build_app"]
