"""powersampling: answer prompts by sampling a frozen model from p(x)^alpha.

from powersampling import reason
from powersampling.engines.toy import ToyEngine
results = reason("...", engine, method="power", alpha=4.0, seed=0)
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
