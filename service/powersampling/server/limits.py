"""The caps on one request's work live in the serving core (`powersampling.serving.limits`)."""

from powersampling.serving.limits import WorkLimits, check_work, planned_tokens, planned_tokens_per_chain

__all__ = ["WorkLimits", "check_work", "planned_tokens", "planned_tokens_per_chain"]
