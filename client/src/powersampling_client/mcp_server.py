"""An MCP server (stdio) that offers the reasoning service as a `reason` tool.

    python -m powersampling_client.mcp_server --target localhost:50051 [--token T] [--tls-root-cert ca.pem]

For an MCP host's configuration (Claude Desktop, an IDE, an agent framework):

    {"command": "python", "args": ["-m", "powersampling_client.mcp_server", "--target", "localhost:50051"]}

Needs the `mcp` extra: pip install "powersampling-client[mcp]". The token may come from
$POWERSAMPLING_AUTH_TOKEN and the target from $POWERSAMPLING_TARGET instead of flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Annotated

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import Field
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise SystemExit(
        f"the MCP server needs the mcp extra: pip install 'powersampling-client[mcp]' ({exc})"
    ) from None

from powersampling_client.client import DEFAULT_TIMEOUT_S, AsyncPowerSamplingClient
from powersampling_client.tools import PARAMETER_DESCRIPTIONS as DOC
from powersampling_client.tools import TOOL_DESCRIPTION, TOOL_NAME, tool_result
from powersampling_client.types import Method, PowerSamplingError

DEFAULT_TARGET = "localhost:50051"


def build_server(client: AsyncPowerSamplingClient) -> MCPServer:
    """An MCP server whose `reason` tool calls the service through `client`."""
    server = MCPServer(
        name="powersampling",
        instructions="Use the reason tool for questions that need careful, reliable reasoning.",
    )

    @server.tool(name=TOOL_NAME, description=TOOL_DESCRIPTION)
    async def reason(
        prompt: Annotated[str, Field(description=DOC["prompt"])],
        method: Annotated[Method | None, Field(description=DOC["method"])] = None,
        alpha: Annotated[float | None, Field(ge=1, description=DOC["alpha"])] = None,
        max_new_tokens: Annotated[int | None, Field(ge=1, description=DOC["max_new_tokens"])] = None,
        mcmc_steps: Annotated[int | None, Field(ge=0, description=DOC["mcmc_steps"])] = None,
        particles: Annotated[int | None, Field(ge=1, description=DOC["particles"])] = None,
        sweeps: Annotated[int | None, Field(ge=1, description=DOC["sweeps"])] = None,
        token_budget: Annotated[int | None, Field(ge=1, description=DOC["token_budget"])] = None,
        seed: Annotated[int | None, Field(ge=0, description=DOC["seed"])] = None,
        n: Annotated[int | None, Field(ge=1, description=DOC["n"])] = None,
        stop: Annotated[list[str] | None, Field(description=DOC["stop"])] = None,
    ) -> dict[str, object]:
        try:
            result = await client.reason(
                prompt,
                method=method,
                alpha=alpha,
                max_new_tokens=max_new_tokens,
                mcmc_steps=mcmc_steps,
                particles=particles,
                sweeps=sweeps,
                token_budget=token_budget,
                seed=seed,
                n=n,
                stop=stop or (),
            )
        except PowerSamplingError as exc:
            raise ToolError(str(exc)) from None  # shown to the model as an error result it can act on
        return tool_result(result)

    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="powersampling-mcp", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("POWERSAMPLING_TARGET", DEFAULT_TARGET),
        help=f"HOST:PORT of the reasoning service (default $POWERSAMPLING_TARGET or {DEFAULT_TARGET})",
    )
    parser.add_argument("--token", default=os.environ.get("POWERSAMPLING_AUTH_TOKEN"), help="bearer token")
    parser.add_argument("--tls-root-cert", default=None, help="PEM root certificate: connect with TLS")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="deadline of each call")
    args = parser.parse_args(argv)
    client = AsyncPowerSamplingClient(
        args.target, token=args.token, root_certificates=args.tls_root_cert, timeout_s=args.timeout_s
    )
    build_server(client).run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
