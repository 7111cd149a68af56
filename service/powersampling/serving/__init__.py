"""The transport-neutral serving core: one request's admission, auth, cache, sampling and telemetry.

The gRPC servicer (`powersampling.server`) and the HTTP API (`powersampling.http`) are thin adapters
over `ServingCore`: they turn their wire format into a `ValidRequest`, iterate the core's events
(`CallStarted`, `CallProgress`, `CallFinished`) and map its errors (`powersampling.serving.errors`) to
their own status codes, each in one place.
"""

from powersampling.serving.core import AccessRecord, ServingCore
from powersampling.serving.events import CallEvent, CallFinished, CallProgress, CallStarted
from powersampling.serving.request import RequestLimits, ValidRequest

__all__ = [
    "AccessRecord",
    "CallEvent",
    "CallFinished",
    "CallProgress",
    "CallStarted",
    "RequestLimits",
    "ServingCore",
    "ValidRequest",
]
