"""Hermes-style tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the answer.

Qwen2.5's chat template asks the model to answer this way; the calls become OpenAI `tool_calls` and
the text around them the message content. A block that is not a JSON object naming one of the
request's tools stays in the text: nothing the model wrote is dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI returns it


def parse_tool_calls(text: str, tool_names: Collection[str]) -> tuple[str | None, list[ParsedToolCall]]:
    """The content left around the calls (None when nothing is left) and the calls, in order."""
    calls: list[ParsedToolCall] = []
    kept: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1), tool_names)
        if call is None:
            continue
        kept.append(text[position : match.start()])
        position = match.end()
        calls.append(call)
    kept.append(text[position:])
    content = "".join(kept).strip()
    return (content or None) if calls else text, calls


def _call(body: str, tool_names: Collection[str]) -> ParsedToolCall | None:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("name") not in tool_names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(f"call_{uuid.uuid4().hex[:24]}", value["name"], json.dumps(arguments))


__all__ = ["ParsedToolCall", "parse_tool_calls"]
