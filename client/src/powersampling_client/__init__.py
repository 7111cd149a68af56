"""Client of the powersampling reasoning service (gRPC): typed, sync and asyncio.

    from powersampling_client import PowerSamplingClient
    with PowerSamplingClient("localhost:50051") as client:
        print(client.reason("What is 17 + 25?", seed=1).text)

Agent integrations: `powersampling_client.tools` (an OpenAI-style function tool) and
`powersampling_client.mcp_server` (an MCP server; needs the `mcp` extra).
"""

from powersampling_client._convert import Prompt, ReasonOptions
from powersampling_client.client import AsyncPowerSamplingClient, ClientSettings, PowerSamplingClient
from powersampling_client.types import (
    Answer,
    AnswerStats,
    PowerSamplingError,
    Progress,
    ReasonEvent,
    ReasonResult,
    SamplingParams,
    ServerLimits,
    ServiceInfo,
    SmcProgress,
    SmcStats,
    Started,
)

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "AnswerStats",
    "AsyncPowerSamplingClient",
    "ClientSettings",
    "PowerSamplingClient",
    "PowerSamplingError",
    "Progress",
    "Prompt",
    "ReasonEvent",
    "ReasonOptions",
    "ReasonResult",
    "SamplingParams",
    "ServerLimits",
    "ServiceInfo",
    "SmcProgress",
    "SmcStats",
    "Started",
    "__version__",
]
