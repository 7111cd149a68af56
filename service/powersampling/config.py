"""Server configuration: one pydantic-settings model, read from `POWERSAMPLING_*` environment
variables and overridden by command-line flags (see `powersampling serve --help`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from powersampling.engines.models import DEFAULT_MODEL
from powersampling.errors import InvalidArgument
from powersampling.params import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PARTICLES,
    DEFAULT_RAMP_TOKENS,
    DEFAULT_RESAMPLE_THRESHOLD,
    DEFAULT_SWEEPS,
    MAX_PARTICLES,
    MAX_SWEEPS,
    MAX_TOKENS_LIMIT,
    SMC_FIELDS,
    Method,
    SamplingParams,
)

_PAPER = SamplingParams()  # the paper's defaults, as SamplingParams defines them
MIB = 1 << 20


class ServerConfig(BaseSettings):
    """Everything `powersampling serve` needs; environment: POWERSAMPLING_<FIELD>, e.g. POWERSAMPLING_PORT."""

    model_config = SettingsConfigDict(env_prefix="POWERSAMPLING_", extra="ignore", frozen=True)

    # Where to listen.
    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(50051, ge=0, le=65535, description="port to bind (0: any free port)")

    # What to serve.
    model: str = Field(DEFAULT_MODEL, min_length=1, description="model name or local Hugging Face folder")
    engine: str = Field(
        "torch", min_length=1, description="engine that runs the model (torch, or toy for a demo)"
    )
    device: str = Field("auto", min_length=1, description="device for the engine: auto, cpu, cuda, ...")
    redis_url: str | None = Field(None, description="Redis URL of the chain cache; unset: no cache")

    # Capacity and request limits.
    max_concurrent_requests: int = Field(4, ge=1, le=10_000, description="requests sampled at once")
    max_queue: int = Field(
        16, ge=0, le=100_000, description="requests waiting beyond those; more are refused"
    )
    max_samples_per_request: int = Field(16, ge=1, le=1024, description="largest n of one request")
    max_prompt_chars: int = Field(200_000, ge=1, description="characters of a prompt (all messages together)")
    max_message_bytes: int = Field(4 * MIB, ge=1024, le=1 << 30, description="largest gRPC message, in bytes")

    # Security.
    auth_token: str | None = Field(
        None, repr=False, description="bearer token every call but health checks must present"
    )
    auth_tokens: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description='tokens bound to tenants, as JSON {"token": "tenant"}; accepted besides auth_token',
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain; with tls_key_file enables TLS"
    )
    tls_key_file: Path | None = Field(
        None, validate_default=True, description="PEM private key of the certificate"
    )

    # Lifecycle.
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="how long in-flight streams may finish on shutdown"
    )
    reflection: bool = Field(True, description="serve gRPC reflection (for grpcurl and reflection clients)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="logging level")

    # What an unset request field takes.
    default_method: Method = Field(_PAPER.method, description="method of requests that leave it unspecified")
    default_alpha: float = Field(_PAPER.alpha, ge=1.0, description="alpha of the target p^alpha")
    default_proposal_temperature: float | None = Field(None, gt=0, description="unset: 1/alpha")
    default_block_size: int = Field(
        _PAPER.block_size, ge=1, le=MAX_TOKENS_LIMIT, description="tokens per block"
    )
    default_max_new_tokens: int = Field(
        _PAPER.max_new_tokens, ge=1, le=MAX_TOKENS_LIMIT, description="most tokens of an answer"
    )
    default_mcmc_steps: int = Field(_PAPER.mcmc_steps, ge=0, description="MCMC steps per block")
    default_token_budget: int | None = Field(None, ge=1, description="token budget per chain; unset: none")
    # What an smc request's unset SMC fields take (method smc only).
    default_particles: int = Field(
        DEFAULT_PARTICLES, ge=1, le=MAX_PARTICLES, description="particles per SMC sweep"
    )
    default_sweeps: int = Field(
        DEFAULT_SWEEPS, ge=1, le=MAX_SWEEPS, description="SMC sweeps per chain (1: plain SMC; more: PIMH)"
    )
    default_resample_threshold: float = Field(
        DEFAULT_RESAMPLE_THRESHOLD, gt=0, le=1, description="SMC resamples when ESS < this x particles"
    )
    default_chunk_size: int = Field(
        DEFAULT_CHUNK_SIZE, ge=1, le=MAX_TOKENS_LIMIT, description="SMC tokens between ESS checks"
    )
    default_ramp_tokens: int = Field(
        DEFAULT_RAMP_TOKENS, ge=0, le=MAX_TOKENS_LIMIT, description="SMC alpha-ramp length (0: none)"
    )

    @field_validator("tls_key_file")
    @classmethod
    def _tls_pair(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        if (key is None) != (info.data.get("tls_cert_file") is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return key

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_token) or bool(self.auth_tokens)

    def default_params(self) -> SamplingParams:
        """The SamplingParams an empty request resolves to (validated)."""
        return SamplingParams(
            method=self.default_method,
            alpha=self.default_alpha,
            proposal_temperature=self.default_proposal_temperature,
            block_size=self.default_block_size,
            max_new_tokens=self.default_max_new_tokens,
            mcmc_steps=self.default_mcmc_steps,
            token_budget=self.default_token_budget,
            **(self.smc_defaults() if self.default_method is Method.SMC else {}),
        )

    def smc_defaults(self) -> dict[str, Any]:
        """The SMC fields an smc request takes when it leaves them unset."""
        return {name: getattr(self, f"default_{name}") for name in SMC_FIELDS}


def load_config(**overrides: Any) -> ServerConfig:
    """ServerConfig from the environment with `overrides` (e.g. command-line flags) on top.

    Invalid values raise InvalidArgument naming the setting, never pydantic's multi-line report.
    """
    try:
        config = ServerConfig(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "config"
        raise InvalidArgument(field, error["msg"].removeprefix("Value error, ")) from None
    try:
        config.default_params()
    except InvalidArgument as exc:  # a default knob that SamplingParams refuses, e.g. budget < tokens
        raise InvalidArgument(f"default_{exc.field}", exc.message) from None
    return config


__all__ = ["ServerConfig", "load_config"]
