"""The service as an agent tool: an OpenAI-style function schema and its handler.

    tools=[REASON_TOOL]                                  # offer it to a chat model
    ...
    output = handle_tool_call(client, call.function.arguments)   # the model called "reason"

The handler never raises for a bad call: it returns a JSON error the model can read and correct.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc

from powersampling_client.client import AsyncPowerSamplingClient, PowerSamplingClient
from powersampling_client.types import PowerSamplingError, ReasonResult

TOOL_NAME = "reason"
TOOL_DESCRIPTION = (
    "Answer a question or solve a task with careful reasoning: samples a language model from a sharpened "
    "distribution p(x)^alpha (power sampling with Metropolis-Hastings, or with Sequential Monte Carlo), "
    "which is slower than plain generation but more reliable on math, logic and code. Returns the answer "
    "text and sampling statistics."
)
PARAMETER_DESCRIPTIONS: dict[str, str] = {
    "prompt": "The question or task, in plain text, with everything needed to answer it.",
    "method": "power (default, best answers); smc (same target with particles, a few times plain decoding); "
    "or a faster baseline: greedy, low-temp, sample.",
    "alpha": "Sharpening exponent, at least 1; higher is more deterministic. Default 4.",
    "max_new_tokens": "Most tokens in the answer.",
    "mcmc_steps": "Metropolis-Hastings steps per block (method power); more is slower and better.",
    "particles": "Particles of method smc (only with it); more is slower and closer to the target.",
    "sweeps": "Sweeps of method smc (only with it): 1 is plain SMC; more make it exact, each costs a sweep.",
    "token_budget": "Cap on all tokens the sampler may generate (at least max_new_tokens).",
    "seed": "Random seed; the same seed and arguments give the same answer.",
    "n": "Number of independent answers to return.",
    "stop": "Strings that end the answer.",
}
_SCHEMAS: dict[str, dict[str, Any]] = {
    "prompt": {"type": "string"},
    "method": {"type": "string", "enum": ["power", "smc", "sample", "low-temp", "greedy"]},
    "alpha": {"type": "number", "minimum": 1},
    "max_new_tokens": {"type": "integer", "minimum": 1},
    "mcmc_steps": {"type": "integer", "minimum": 0},
    "particles": {"type": "integer", "minimum": 1},
    "sweeps": {"type": "integer", "minimum": 1},
    "token_budget": {"type": "integer", "minimum": 1},
    "seed": {"type": "integer", "minimum": 0},
    "n": {"type": "integer", "minimum": 1},
    "stop": {"type": "array", "items": {"type": "string"}},
}

REASON_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": TOOL_DESCRIPTION,
        "parameters": {
            "type": "object",
            "properties": {
                name: {**schema, "description": PARAMETER_DESCRIPTIONS[name]}
                for name, schema in _SCHEMAS.items()
            },
            "required": ["prompt"],
            "additionalProperties": False,
        },
    },
}


def parse_tool_arguments(arguments: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The prompt and client options of a tool call; raises PowerSamplingError naming a bad argument."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise _bad("arguments", f"not valid JSON: {exc.msg}") from None
    if not isinstance(arguments, Mapping):
        raise _bad("arguments", "must be a JSON object")
    properties = REASON_TOOL["function"]["parameters"]["properties"]
    for name, value in arguments.items():
        if name not in properties:
            raise _bad(name, "unknown argument")
        if not _matches(properties[name], value):
            raise _bad(name, f"expected {properties[name]['type']}, got {json.dumps(value)}")
    if "prompt" not in arguments:
        raise _bad("prompt", "required")
    options = {name: value for name, value in arguments.items() if name != "prompt"}
    return arguments["prompt"], options


def _matches(schema: Mapping[str, Any], value: Any) -> bool:
    kind = schema["type"]
    if kind == "string":
        return isinstance(value, str) and ("enum" not in schema or value in schema["enum"])
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list) and all(_matches(schema["items"], v) for v in value)
    return False


def _bad(field: str, message: str) -> PowerSamplingError:
    return PowerSamplingError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def tool_result(result: ReasonResult) -> dict[str, Any]:
    """What the model reads back: the answer first, then the numbers that say how it was found."""
    first = result.answers[0]
    out: dict[str, Any] = {
        "answer": first.text,
        "finish_reason": first.finish_reason,
        "seed": first.seed,
        "tokens_spent": first.stats.tokens_spent,
        "mcmc_steps": first.stats.mcmc_steps,
        "acceptance_rate": round(first.stats.acceptance_rate, 4),
        "change_rate": round(first.stats.change_rate, 4),
        "latency_ms": round(result.latency_ms, 1),
        "model": result.model,
        "cache_hit": result.cache_hit,
    }
    smc = first.stats.smc
    if smc is not None:
        out["smc"] = {
            "particles": smc.particles,
            "sweeps": smc.sweeps,
            "accepted_sweeps": smc.accepted_sweeps,
            "resamples": smc.resamples,
            "ess_min": round(smc.ess_min, 4),
            "log_z_hat": round(smc.log_z_hat, 4),
        }
    if len(result.answers) > 1:
        out["answers"] = [a.text for a in result.answers]
    return out


def tool_error(exc: PowerSamplingError) -> dict[str, Any]:
    return {"error": {"code": exc.code.name, "field": exc.field, "message": exc.message}}


def handle_tool_call(client: PowerSamplingClient, arguments_json: str | Mapping[str, Any]) -> str:
    """Run a `reason` tool call; returns the JSON text to hand back to the model (result or error)."""
    try:
        prompt, options = parse_tool_arguments(arguments_json)
        return json.dumps(tool_result(client.reason(prompt, **options)), ensure_ascii=False)
    except PowerSamplingError as exc:
        return json.dumps(tool_error(exc), ensure_ascii=False)


async def handle_tool_call_async(
    client: AsyncPowerSamplingClient, arguments_json: str | Mapping[str, Any]
) -> str:
    """`handle_tool_call` for the asyncio client."""
    try:
        prompt, options = parse_tool_arguments(arguments_json)
        return json.dumps(tool_result(await client.reason(prompt, **options)), ensure_ascii=False)
    except PowerSamplingError as exc:
        return json.dumps(tool_error(exc), ensure_ascii=False)


__all__ = [
    "PARAMETER_DESCRIPTIONS",
    "REASON_TOOL",
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "handle_tool_call",
    "handle_tool_call_async",
    "parse_tool_arguments",
    "tool_error",
    "tool_result",
]
