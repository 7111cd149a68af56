"""Exporters configured from the standard ``OTEL_*`` environment (see `powersampling.telemetry.otel`).

One table names, per signal, the OTLP exporter class for each protocol and the console exporter;
`exporters_from_env` reads ``OTEL_{TRACES,METRICS}_EXPORTER`` and the protocol variables against it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

log = logging.getLogger(__name__)

TRACES_FILE_ENV = "POWERSAMPLING_TRACES_FILE"

Signal = Literal["traces", "metrics"]

_EXPORTER_ALIASES = {"otlp_proto_grpc": ("otlp", "grpc"), "otlp_proto_http": ("otlp", "http/protobuf")}


@dataclass(frozen=True, slots=True)
class _SignalExporters:
    """How one signal's exporters are built: OTLP by protocol (module, class; imported when used) and the
    console exporter."""

    otlp: dict[str, tuple[str, str]]
    console: Callable[[], Any]


_SIGNALS: dict[Signal, _SignalExporters] = {
    "traces": _SignalExporters(
        otlp={
            "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
            "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
        },
        console=ConsoleSpanExporter,
    ),
    "metrics": _SignalExporters(
        otlp={
            "grpc": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
            "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
        },
        console=ConsoleMetricExporter,
    ),
}


def env(name: str) -> str:
    """The variable's value, stripped ("" when unset)."""
    return os.environ.get(name, "").strip()


def env_flag(name: str) -> bool:
    """True when the variable says so (true, 1, yes, on)."""
    return env(name).lower() in ("true", "1", "yes", "on")


def exporters_from_env(signal: Signal) -> list[Any]:
    """The span or metric exporters the environment asks for (plus the JSON-lines span file, if set)."""
    table = _SIGNALS[signal]
    upper = signal.upper()
    exporters: list[Any] = []
    for name in _exporter_names(upper):
        kind, protocol = _EXPORTER_ALIASES.get(name, (name, None))
        if kind == "otlp":
            protocol = _otlp_protocol(upper, protocol)
            where = table.otlp.get(protocol)
            if where is None:
                log.warning(
                    "OTLP protocol %r is not supported (grpc, http/protobuf); no %s", protocol, signal
                )
                continue
            module, cls = where
            exporters.append(getattr(importlib.import_module(module), cls)())
        elif kind == "console":
            exporters.append(table.console())
        else:
            log.warning("OTEL_%s_EXPORTER %r is not supported (otlp, console, none); ignored", upper, name)
    if signal == "traces":
        path = env(TRACES_FILE_ENV)
        if path:
            exporters.append(JsonLinesSpanExporter(path))
    return exporters


def _exporter_names(signal: str) -> list[str]:
    """Exporter names for "TRACES" or "METRICS": the variable's list, or otlp when an endpoint is set."""
    raw = env(f"OTEL_{signal}_EXPORTER")
    if not raw:
        has_endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT") or env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        return ["otlp"] if has_endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return [] if "none" in names else names


def _otlp_protocol(signal: str, alias: str | None) -> str:
    if alias is not None:
        return alias
    protocol = (env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env("OTEL_EXPORTER_OTLP_PROTOCOL")).lower()
    return protocol or "grpc"


class JsonLinesSpanExporter(ConsoleSpanExporter):
    """Appends each finished span to a file as one JSON line (`ReadableSpan.to_json` without indent)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        super().__init__(out=self._file, formatter=_span_json_line)

    def shutdown(self) -> None:
        super().shutdown()
        if not self._file.closed:
            self._file.close()


def _span_json_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


__all__ = ["TRACES_FILE_ENV", "JsonLinesSpanExporter", "Signal", "env", "env_flag", "exporters_from_env"]
