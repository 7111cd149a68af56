"""Build and run the gRPC server: ReasoningService, health, reflection, auth, TLS, graceful drain.

    running = await serve(ServerConfig(port=0), engine=ToyEngine(...))
    await running.wait_ready()          # the engine is loaded; health says SERVING
    ...                                 # clients talk to running.target
    await running.stop()                # drain in-flight streams, then close

The server listens at once; the engine loads in the background (minutes for a real model), and the
health service says NOT_SERVING until it is ready, so orchestrators can tell "starting" from "up".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from powersampling._proto.v1 import reasoning_pb2 as pb
from powersampling.cache.base import ChainCache
from powersampling.config import ServerConfig
from powersampling.engines.base import Engine
from powersampling.engines.factory import load_engine
from powersampling.errors import InvalidArgument
from powersampling.server.auth import Authenticator, BearerTokenInterceptor
from powersampling.server.instrumentation import grpc_interceptors
from powersampling.server.limits import WorkLimits, check_work
from powersampling.server.servicer import ReasoningServicer
from powersampling.server.validation import decode_describe_request, decode_reason_request
from powersampling.serving.core import ServingCore
from powersampling.telemetry.base import NoTelemetry, Telemetry

if TYPE_CHECKING:
    from powersampling.http.api_server import HttpServer

logger = logging.getLogger("powersampling.server")

# "powersampling.v1.ReasoningService"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ReasoningService"].full_name
HEALTH_SERVICE_NAME = health.SERVICE_NAME


@dataclass(eq=False)
class RunningServer:
    """A started server. `target` is where a client on this host connects."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int
    servicer: ReasoningServicer
    health: health.aio.HealthServicer
    startup: asyncio.Task[Engine]
    telemetry: Telemetry
    cache: ChainCache | None
    owns: frozenset[str] = frozenset()  # what serve() created, and so closes: "engine", "cache", "telemetry"
    http: HttpServer | None = None  # the OpenAI-compatible HTTP API, when config.http_port is set
    _stopping: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def target(self) -> str:
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host in ("::", "[::]"):
            host = "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def http_port(self) -> int | None:
        """The HTTP API's port (None when it is off)."""
        return self.http.port if self.http is not None else None

    @property
    def http_url(self) -> str | None:
        """Where a client on this host reaches the HTTP API ("http://127.0.0.1:8000"), if it is on."""
        if self.http is None:
            return None
        host = self.target.rsplit(":", 1)[0] if self.config.http_host is None else self.config.http_host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host in ("::", "[::]"):
            host = "[::1]"
        return f"http://{host}:{self.http.port}"

    @property
    def engine(self) -> Engine | None:
        """The engine once loaded, else None."""
        if self.startup.done() and not self.startup.cancelled() and self.startup.exception() is None:
            return self.startup.result()
        return None

    async def wait_ready(self, timeout_s: float | None = None) -> Engine:
        """Wait until the engine is loaded; raises what loading raised."""
        return await asyncio.wait_for(asyncio.shield(self.startup), timeout_s)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, let in-flight ones finish, then close.

        Calls still running after `drain_timeout_s` (default: the config's) are cancelled, which
        stops their engine work. Safe to call more than once.
        """
        if self._stopping is None:
            grace = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        logger.info("shutting down: draining in-flight calls for up to %.1f s", grace_s)
        await self.health.enter_graceful_shutdown()
        self.startup.cancel()
        # Both listeners drain together: in-flight gRPC streams and HTTP requests share the grace.
        draining = [self.server.stop(grace_s)]
        if self.http is not None:
            draining.append(self.http.stop(grace_s))
        await asyncio.gather(*draining)
        engine = self.engine
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.startup
        if engine is not None and "engine" in self.owns:
            await engine.close()
        if self.cache is not None and "cache" in self.owns:
            await self.cache.close()
        if "telemetry" in self.owns:
            self.telemetry.shutdown()
        logger.info("server stopped")

    async def force_stop(self) -> None:
        """Cut a drain short (a second signal): in-flight calls on both listeners are cancelled now."""
        if self.http is not None:
            self.http.force()
        await self.server.stop(0)


async def serve(
    config: ServerConfig,
    engine: Engine | None = None,
    cache: ChainCache | None = None,
    telemetry: Telemetry | None = None,
) -> RunningServer:
    """Start serving `config.host:config.port` (port 0: any free port; see RunningServer.port).

    Whatever is not given is built from `config`: the engine (`config.model` on `config.engine`,
    loaded in the background), the Redis cache (when `config.redis_url` is set) and telemetry
    (OpenTelemetry from OTEL_* variables when available, else none). What serve() builds, stop()
    closes; what the caller passes stays the caller's.
    """
    try:  # fail now, naming the setting, if the default knobs are inconsistent or over the caps
        check_work(config.default_params(), WorkLimits.from_config(config))
    except InvalidArgument as exc:
        raise InvalidArgument(f"default_{exc.field}", exc.message) from None
    owns: set[str] = set()
    if telemetry is None:
        telemetry = default_telemetry()
        owns.add("telemetry")
    if cache is None and config.redis_url:
        cache = await open_cache(config.redis_url, **config.cache_options())
        owns.add("cache")
    try:
        authenticator = Authenticator(config.auth_token, config.tenant_tokens())
    except ValueError as exc:  # e.g. the tokens file changed since the settings were read
        raise InvalidArgument("auth_tokens", str(exc)) from None
    core = ServingCore(config, cache=cache, telemetry=telemetry, authenticator=authenticator)
    servicer = ReasoningServicer(config, core=core)

    interceptors = list(grpc_interceptors(telemetry))
    if authenticator.enabled:
        interceptors.append(BearerTokenInterceptor(authenticator))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            *keepalive_options(config),
        ],
    )
    server.add_generic_rpc_handlers((_reasoning_handler(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if config.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    http: HttpServer | None = None
    try:
        port = _bind(server, config)
        await server.start()
        if config.http_port is not None:
            http = await _start_http(core, config)
    except BaseException:
        await server.stop(None)
        if "cache" in owns and cache is not None:
            await cache.close()
        if "telemetry" in owns:
            telemetry.shutdown()
        raise
    logger.info(
        "listening on %s:%d (%s%s)",
        config.host,
        port,
        "TLS" if config.tls_enabled else "plaintext",
        ", bearer-token auth" if authenticator.enabled else "",
    )
    if engine is None:
        owns.add("engine")
    startup = asyncio.get_running_loop().create_task(
        _start_engine(config, engine, servicer, health_servicer), name="powersampling-engine-startup"
    )
    return RunningServer(
        config=config,
        server=server,
        port=port,
        servicer=servicer,
        health=health_servicer,
        startup=startup,
        telemetry=telemetry,
        cache=cache,
        owns=frozenset(owns),
        http=http,
    )


async def _start_http(core: ServingCore, config: ServerConfig) -> HttpServer:
    try:
        from powersampling.http.api_server import HttpServer
    except ImportError as exc:
        raise InvalidArgument(
            "http_port", f"the HTTP API is not available in this installation ({exc})"
        ) from None
    return await HttpServer.start(core, config)


def _reasoning_handler(servicer: ReasoningServicer) -> grpc.GenericRpcHandler:
    # Registered by hand rather than with the generated helper so that both methods get lenient
    # deserializers: malformed bytes reach validation and come back as INVALID_ARGUMENT naming the field.
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Reason": grpc.unary_stream_rpc_method_handler(
                servicer.Reason,
                request_deserializer=decode_reason_request,
                response_serializer=pb.ReasonEvent.SerializeToString,
            ),
            "Describe": grpc.unary_unary_rpc_method_handler(
                servicer.Describe,
                request_deserializer=decode_describe_request,
                response_serializer=pb.ServiceDescription.SerializeToString,
            ),
        },
    )


def keepalive_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC server options: ping idle connections, drop dead ones, and let clients ping as often."""
    time_ms = round(config.keepalive_time_s * 1000)
    return [
        ("grpc.keepalive_time_ms", time_ms),
        ("grpc.keepalive_timeout_ms", round(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Clients may ping as often as the server does; more often is a policy violation (GOAWAY).
        ("grpc.http2.min_ping_interval_without_data_ms", min(time_ms, 10_000)),
    ]


def _bind(server: grpc.aio.Server, config: ServerConfig) -> int:
    host = f"[{config.host}]" if ":" in config.host and not config.host.startswith("[") else config.host
    address = f"{host}:{config.port}"
    try:
        if config.tls_enabled:
            assert config.tls_cert_file is not None and config.tls_key_file is not None
            key = _read("tls_key_file", config.tls_key_file)
            cert = _read("tls_cert_file", config.tls_cert_file)
            _check_key_pair(config.tls_cert_file, config.tls_key_file)
            return server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        return server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's way of saying the address cannot be bound
        raise InvalidArgument("port", f"cannot listen on {address}: {exc}") from None


def _check_key_pair(cert: Path, key: Path) -> None:
    """Refuse a certificate and key that do not load together (grpc would only say "Failed to bind")."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise InvalidArgument(
                "tls_key_file", f"{key} is not the private key of the certificate {cert}"
            ) from None
        raise InvalidArgument(
            "tls_cert_file", f"cannot load the certificate {cert} with the key {key}: {exc.reason or exc}"
        ) from None


def _read(field_name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(field_name, f"cannot read {path}: {exc.strerror or exc}") from None


async def _start_engine(
    config: ServerConfig,
    engine: Engine | None,
    servicer: ReasoningServicer,
    health_servicer: health.aio.HealthServicer,
) -> Engine:
    try:
        if engine is None:
            if config.engine == "toy":  # the demo ignores `model` and `device`: say what really loads
                logger.info("loading the toy demo model (a character bigram table) on the toy engine")
            else:
                logger.info(
                    "loading model %s on the %s engine (device %s)",
                    config.model,
                    config.engine,
                    config.device,
                )
            engine = await asyncio.to_thread(build_engine, config)
        await engine.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.error("the engine failed to start: %s", exc)
        raise
    servicer.attach_engine(engine)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    info = engine.info
    logger.info(
        "serving %s on %s (%s, context %d tokens)",
        info.model,
        info.engine,
        info.device,
        info.max_context_tokens,
    )
    return engine


def build_engine(config: ServerConfig) -> Engine:
    """The engine `config` names (blocking: loads the model). "toy" is the demo toy model."""
    model = None if config.engine == "toy" else config.model
    return load_engine(model, engine=config.engine, **config.engine_options())


async def open_cache(redis_url: str, **options: Any) -> ChainCache:
    """The Redis chain cache at `redis_url` (`options`: see `RedisChainCache.from_url`)."""
    try:
        from powersampling.cache.redis_cache import RedisChainCache
    except ImportError as exc:
        raise InvalidArgument(
            "redis_url", f"the Redis cache is not available in this installation ({exc})"
        ) from None
    try:
        cache = RedisChainCache.from_url(redis_url, **options)
    except ValueError as exc:  # a malformed URL
        raise InvalidArgument("redis_url", str(exc)) from None
    if inspect.isawaitable(cache):
        cache = await cache
    return cache


def default_telemetry() -> Telemetry:
    """OpenTelemetry configured from OTEL_* variables when its module is installed, else no telemetry."""
    try:
        from powersampling.telemetry.otel import setup_telemetry
    except ImportError as exc:
        if exc.name != "powersampling.telemetry.otel":
            logger.warning("telemetry disabled: %s", exc)
        return NoTelemetry()
    return setup_telemetry()


__all__ = [
    "HEALTH_SERVICE_NAME",
    "SERVICE_NAME",
    "RunningServer",
    "build_engine",
    "keepalive_options",
    "serve",
]
