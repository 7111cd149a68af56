"""A request as the serving core takes it, and the checks every transport shares.

A transport parses its wire format (a ReasonRequest, an OpenAI JSON body) into a prompt and options,
then `check_limits` and `resolve_tenant` apply the server's bounds and the caller's tenant, so the
rules and the field names they report are the same whatever the transport.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from powersampling.cache.base import CachePolicy
from powersampling.cache.keys import MAX_TENANT_LENGTH
from powersampling.engines.base import Prompt
from powersampling.errors import InvalidArgument
from powersampling.params import SMC_FIELDS, Method, SamplingParams
from powersampling.serving.errors import PermissionDenied
from powersampling.serving.limits import WorkLimits, check_work


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a call: the tenant bound to its token, or None when the token carries no tenant."""

    tenant: str | None


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The server's bounds on one request."""

    max_samples_per_request: int
    max_prompt_chars: int
    max_context_tokens: int
    work: WorkLimits | None = None  # the operator's caps on the request's work; None: none


@dataclass(frozen=True, slots=True)
class ValidRequest:
    """A request that passed every check the server can make without the tokenizer."""

    prompt: Prompt
    params: SamplingParams  # unseeded when the request had no seed (the run draws one)
    chat: bool | None
    cache_policy: CachePolicy
    tenant: str
    # Tool definitions (OpenAI's JSON schema form) rendered by the chat template; empty: none.
    tools: Sequence[Mapping[str, Any]] = field(default=())
    # What the transport calls the prompt, so a tokenizer-time error names the caller's field.
    prompt_field: str = "prompt"


def check_limits(params: SamplingParams, limits: RequestLimits) -> None:
    """Refuse parameters past the server's bounds (InvalidArgument naming the field)."""
    if params.n > limits.max_samples_per_request:
        raise InvalidArgument(
            "n", f"at most {limits.max_samples_per_request} samples per request, got {params.n}"
        )
    if params.block_size > limits.max_context_tokens:
        raise InvalidArgument(
            "block_size",
            f"{params.block_size} exceeds the model's whole context ({limits.max_context_tokens} tokens)",
        )
    if limits.work is not None:
        check_work(params, limits.work)


# Power sampling's knobs that method smc does not use: setting one with it is a mistake worth naming.
NOT_FOR_SMC = ("block_size", "mcmc_steps")


def smc_options(
    method: Method, defaults: SamplingParams, smc_defaults: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The SMC fields before the request's own: the values in force for smc (so the resolved
    parameters say what ran), unset for every other method (where setting one is refused)."""
    if method is not Method.SMC:
        return dict.fromkeys(SMC_FIELDS)
    if smc_defaults is None:  # None leaves a field to the method's own default
        smc_defaults = (
            {name: getattr(defaults, name) for name in SMC_FIELDS} if defaults.method is Method.SMC else {}
        )
    return {name: smc_defaults.get(name) for name in SMC_FIELDS}


def check_smc_fields(method: Method, set_fields: Sequence[str]) -> None:
    """Refuse power sampling's knobs (NOT_FOR_SMC) that a request set along with method smc."""
    if method is Method.SMC:
        for name in set_fields:
            raise InvalidArgument(
                name, "is not used by method smc; leave it unset (smc takes particles, sweeps, chunk_size)"
            )


def check_chars(field_name: str, chars: int, limits: RequestLimits) -> None:
    """Refuse a prompt longer than the server's max_prompt_chars."""
    if chars > limits.max_prompt_chars:
        raise InvalidArgument(
            field_name, f"{chars} characters exceed the server's limit of {limits.max_prompt_chars}"
        )


def resolve_tenant(requested: str, bound: str | None) -> str:
    """The tenant a request runs as: the credentials' tenant when they carry one, else the request's."""
    if bound is not None:
        if requested and requested != bound:
            if not bound:  # e.g. the shared token beside tenant tokens
                raise PermissionDenied(
                    "tenant",
                    'these credentials may use only the default tenant ""; use a token bound to the tenant',
                )
            raise PermissionDenied("tenant", "differs from the tenant of the caller's credentials")
        return bound
    if len(requested) > MAX_TENANT_LENGTH:
        raise InvalidArgument("tenant", f"at most {MAX_TENANT_LENGTH} characters, got {len(requested)}")
    if any(unicodedata.category(c).startswith("C") for c in requested):
        raise InvalidArgument("tenant", "must not contain control or unassigned characters")
    return requested


__all__ = [
    "NOT_FOR_SMC",
    "Identity",
    "RequestLimits",
    "ValidRequest",
    "check_chars",
    "check_limits",
    "check_smc_fields",
    "resolve_tenant",
    "smc_options",
]
