"""The telemetry contract the server relies on. `NoTelemetry` costs nothing when telemetry is off;
the OpenTelemetry implementation lives in `powersampling.telemetry.otel`. The contract knows no transport:
a gRPC server asks for interceptors separately (`powersampling.server.instrumentation`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from powersampling.events import SamplerEvent
from powersampling.params import SamplingParams
from powersampling.results import CacheStatus, ReasonResult


class RequestObserver(Protocol):
    """Follows one Reason request: the server feeds it the sampler's events and the outcome."""

    def on_cache_status(self, status: CacheStatus, resumed_from_block: int) -> None: ...

    def on_event(self, event: SamplerEvent) -> None: ...

    def on_first_event_sent(self) -> None: ...

    def finish(self, results: Sequence[ReasonResult] | None, error: BaseException | None = None) -> None: ...


class Telemetry(Protocol):
    def request(
        self,
        *,
        request_id: str,
        params: SamplingParams,
        model: str,
        engine: str,
        prompt_tokens: int,
        tenant: str,
    ) -> RequestObserver: ...

    def set_queue_depth(self, depth: int) -> None: ...

    def record_rejection(self, reason: str) -> None: ...

    def shutdown(self) -> None: ...


class _NoRequest:
    def on_cache_status(self, status: CacheStatus, resumed_from_block: int) -> None:
        pass

    def on_event(self, event: SamplerEvent) -> None:
        pass

    def on_first_event_sent(self) -> None:
        pass

    def finish(self, results: Sequence[ReasonResult] | None, error: BaseException | None = None) -> None:
        pass


class NoTelemetry:
    """Telemetry switched off."""

    _request = _NoRequest()

    def request(self, **_: Any) -> RequestObserver:
        return self._request

    def set_queue_depth(self, depth: int) -> None:
        pass

    def record_rejection(self, reason: str) -> None:
        pass

    def shutdown(self) -> None:
        pass
