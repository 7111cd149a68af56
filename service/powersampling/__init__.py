"""powersampling: answer prompts by sampling a frozen model from p(x)^alpha.

from powersampling import reason
from powersampling.engines.toy import ToyEngine
results = reason("...", engine, method="power", alpha=4.0, seed=0)

Layers, bottom first; a module imports only from its own layer or below, and never in a circle
(tests/test_layers.py checks both, imports inside functions included):

    values     errors, params, results, events, stops, _proto   plain values and the wire stubs
    models     models/                                          registry, store, GGUF, fingerprints
    engines    engines/                                         torch, vLLM, toy; one factory
    sampler    sampler/                                         MH and Power-SMC: pure algorithms
    api, cache api, cache/, this package                        reason(); the cached run on Redis
    telemetry  telemetry/                                       OpenTelemetry spans and metrics
    config     config, sampling_flags                           validated settings and their flags
    serving    serving/                                         the transport-neutral serving core
    http       http/                                            the HTTP API over the serving core
    server     server/                                          the gRPC service; starts both
    commands, bench, cli, __main__                              the command line
"""

from powersampling.api import ReasonResult, make_params, reason, reason_async
from powersampling.errors import EngineError, InvalidArgument, PowerSamplingError, UnknownModel
from powersampling.params import Method, SamplingParams
from powersampling.results import SmcStats

__version__ = "0.1.0"

__all__ = [
    "EngineError",
    "InvalidArgument",
    "Method",
    "PowerSamplingError",
    "ReasonResult",
    "SamplingParams",
    "SmcStats",
    "UnknownModel",
    "__version__",
    "make_params",
    "reason",
    "reason_async",
]
