"""Engines: what extends token prefixes with the model's proposal (toy exact, torch, vLLM)."""

from powersampling.engines.base import (
    BatchingEngine,
    ChatMessage,
    Engine,
    EngineInfo,
    ExtendRequest,
    Extension,
    Prompt,
)

__all__ = ["BatchingEngine", "ChatMessage", "Engine", "EngineInfo", "ExtendRequest", "Extension", "Prompt"]
