"""The `powersampling` command.

Each subcommand is one `add_<name>_command(subparsers)` function that builds its parser and sets
`func` to the function that runs it; COMMANDS lists them, so a new subcommand is one line there.
Bad input prints one line, `powersampling: error: <field>: <message>`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import os
import re
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from powersampling.bench.cli import add_bench_command
from powersampling.commands.prepare_model import add_prepare_model_command
from powersampling.commands.reason import add_reason_command
from powersampling.config import ServerConfig, load_config
from powersampling.errors import InvalidArgument, PowerSamplingError
from powersampling.telemetry.report import add_report_command

PROG = "powersampling"
DEFAULT_ADDRESS = "127.0.0.1:50051"
TOKEN_ENV = "POWERSAMPLING_AUTH_TOKEN"


class UsageError(Exception):
    """A command line that argparse refused."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# --- serve ----------------------------------------------------------------------------------------


def add_serve_command(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the gRPC reasoning service (and, with --http-port, its OpenAI-compatible HTTP API)",
        description="Run powersampling.v1.ReasoningService. Every flag can also be set as an environment "
        "variable POWERSAMPLING_<FLAG> (e.g. POWERSAMPLING_PORT=50051); flags win.",
    )
    for name, info in ServerConfig.model_fields.items():
        _add_setting_flag(
            p, name, info.annotation, info.description or "", info.get_default(call_default_factory=True)
        )
    p.set_defaults(func=run_serve)


def _add_setting_flag(
    p: argparse.ArgumentParser, name: str, annotation: Any, description: str, default: Any
) -> None:
    """A flag for one ServerConfig field; absent unless given, so the environment still applies."""
    kinds = (
        [a for a in typing.get_args(annotation) if a is not type(None)]
        if _is_union(annotation)
        else [annotation]
    )
    kind = kinds[0]
    shown = "unset" if default is None or default == {} else getattr(default, "value", default)
    kwargs: dict[str, Any] = {
        "dest": name,
        "default": argparse.SUPPRESS,
        "help": f"{description} (default {shown}; env POWERSAMPLING_{name.upper()})",
    }
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(kind) is dict:
        kwargs["type"] = _json_object
        kwargs["metavar"] = "JSON"
    elif typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = typing.get_args(kind)
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        kwargs["choices"] = [member.value for member in kind]
    # Anything else stays text: pydantic converts and checks it, with the same messages as for the
    # environment variables.
    p.add_argument("--" + name.replace("_", "-"), **kwargs)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def run_serve(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in ServerConfig.model_fields if hasattr(args, name)}
    config = load_config(**overrides)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "cache_secret" in overrides:
        logging.getLogger("powersampling.server").warning(
            "--cache-secret shows the secret to anyone who can list processes: "
            "use --cache-secret-file or POWERSAMPLING_CACHE_SECRET instead"
        )
    return asyncio.run(_serve_until_signalled(config))


async def _serve_until_signalled(config: ServerConfig) -> int:
    """Serve until SIGINT or SIGTERM, then drain; a second signal during the drain stops at once."""
    from powersampling.server import serve

    running = await serve(config)
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            force.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    stop_requested = loop.create_task(stop.wait())
    await asyncio.wait({running.startup, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if running.startup.done() and not running.startup.cancelled() and running.startup.exception() is not None:
        error = running.startup.exception()
        await running.stop(0)
        stop_requested.cancel()
        if isinstance(error, InvalidArgument):
            raise error
        _print_error(f"engine: {error}")
        return 1
    await stop_requested
    draining = loop.create_task(running.stop())
    forced = loop.create_task(force.wait())
    await asyncio.wait({draining, forced}, return_when=asyncio.FIRST_COMPLETED)
    if draining.done():
        forced.cancel()
        await draining
        return 0
    logging.getLogger("powersampling.server").warning(
        "second signal: stopping now, cancelling in-flight calls"
    )
    await running.force_stop()  # cuts the drain short: in-flight calls are cancelled now
    await draining
    return 130


# --- healthcheck and describe: small clients of a running server ------------------------------------


def _add_connection_flags(p: argparse.ArgumentParser, *, token: bool) -> None:
    p.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"HOST:PORT of the server (default {DEFAULT_ADDRESS})"
    )
    p.add_argument("--timeout-s", type=float, default=5.0, help="deadline of the call in seconds (default 5)")
    p.add_argument("--tls-root-cert", type=Path, default=None, help="PEM root certificate: connect with TLS")
    if token:
        p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    if args.timeout_s <= 0:
        raise InvalidArgument("timeout_s", f"must be positive, got {args.timeout_s:g}")
    if not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", args.address):
        raise InvalidArgument("address", f"expected HOST:PORT, got {args.address!r}")
    if args.tls_root_cert is None:
        return grpc.insecure_channel(args.address)
    try:
        root = args.tls_root_cert.read_bytes()
    except OSError as exc:
        raise InvalidArgument("tls_root_cert", f"cannot read {args.tls_root_cert}: {exc.strerror}") from None
    return grpc.secure_channel(args.address, grpc.ssl_channel_credentials(root_certificates=root))


def add_healthcheck_command(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "healthcheck",
        help="exit 0 if a server reports SERVING (for Docker and Kubernetes probes)",
        description="Ask a server's grpc.health.v1 service; exit 0 if SERVING, 1 otherwise.",
    )
    _add_connection_flags(p, token=False)
    p.add_argument("--service", default="", help="service to ask about (default: the whole server)")
    p.set_defaults(func=run_healthcheck)


def run_healthcheck(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(args) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def add_describe_command(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "describe",
        help="print what a running server serves (model, engine, defaults, limits) as JSON",
    )
    _add_connection_flags(p, token=True)
    p.set_defaults(func=run_describe)


def run_describe(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from powersampling._proto.v1 import reasoning_pb2, reasoning_pb2_grpc

    token = args.token or os.environ.get(TOKEN_ENV)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with _channel(args) as channel:
        try:
            description = reasoning_pb2_grpc.ReasoningServiceStub(channel).Describe(
                reasoning_pb2.DescribeRequest(), timeout=args.timeout_s, metadata=metadata
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps(json_format.MessageToDict(description, preserving_proto_field_name=True), indent=2))
    return 0


# --- the command ------------------------------------------------------------------------------------

COMMANDS: tuple[Callable[[Any], None], ...] = (
    add_reason_command,
    add_serve_command,
    add_healthcheck_command,
    add_describe_command,
    add_bench_command,
    add_report_command,
    add_prepare_model_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Answer prompts by power sampling a frozen language model.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def _print_error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _usage_message(message: str) -> str:
    """argparse's message as '<field>: <message>' ("argument --port: ..." → "port: ...")."""
    match = re.match(r"argument (?:-\w, )?(?:--)?([\w-]+)(?:/[^:]*)?: (.*)", message, re.DOTALL)
    if match:
        return f"{match[1].replace('-', '_').lower()}: {match[2]}"
    match = re.match(r"the following arguments are required: (.*)", message)
    if match:
        return f"{match[1].replace('-', '_').lower()}: required"
    match = re.match(r"unrecognized arguments: (.*)", message)
    if match:
        return f"{match[1]}: unrecognized argument"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        _print_error(_usage_message(str(exc)).replace("\n", " "))
        return 2
    except InvalidArgument as exc:
        _print_error(f"{exc.field}: {exc.message}".replace("\n", " "))
        return 2
    except PowerSamplingError as exc:  # e.g. a model that is not installed: no traceback
        _print_error(str(exc).replace("\n", " "))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
