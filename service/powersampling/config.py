"""Server configuration: one pydantic-settings model, read from `POWERSAMPLING_*` environment
variables and overridden by command-line flags (see `powersampling serve --help`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from powersampling.engines.models import DEFAULT_MODEL
from powersampling.errors import InvalidArgument
from powersampling.params import MAX_TOKENS_LIMIT, Method, SamplingParams

_PAPER = SamplingParams()  # the paper's defaults, as SamplingParams defines them
MIB = 1 << 20
MIN_CACHE_SECRET_CHARS = 16


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

    # The chain cache (Redis; see docs/cache.md). Only used with redis_url.
    cache_answer_ttl_s: float = Field(
        24 * 3600.0, gt=0, le=366 * 24 * 3600, description="lifetime of a cached completed answer, seconds"
    )
    cache_checkpoint_ttl_s: float = Field(
        3600.0, gt=0, le=366 * 24 * 3600, description="lifetime of a request's checkpoints, renewed per block"
    )
    cache_timeout_s: float = Field(0.25, gt=0, le=60, description="Redis socket read timeout, seconds")
    cache_connect_timeout_s: float | None = Field(
        None, gt=0, le=60, description="Redis connect timeout; unset: cache_timeout_s (5x for rediss://)"
    )
    cache_max_value_bytes: int = Field(
        4 * MIB, ge=1024, le=512 * MIB, description="largest value stored or read; larger ones are deleted"
    )
    cache_secret: str | None = Field(
        None,
        repr=False,
        min_length=MIN_CACHE_SECRET_CHARS,
        description="key of the MAC that authenticates cache values, the same on every replica; unset: a "
        "random key per process (no reuse across replicas or restarts). A flag shows in the process list: "
        "prefer cache_secret_file or the environment variable",
    )
    cache_secret_file: Path | None = Field(
        None, description="file holding cache_secret (its trailing newline ignored)"
    )

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

    @field_validator("tls_key_file")
    @classmethod
    def _tls_pair(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        if (key is None) != (info.data.get("tls_cert_file") is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return key

    @field_validator("cache_secret_file")
    @classmethod
    def _cache_secret_readable(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None:
            if info.data.get("cache_secret") is not None:
                raise ValueError("set cache_secret or cache_secret_file, not both")
            _read_secret(path)  # readable and long enough, now rather than at the first request
        return path

    def cache_secret_value(self) -> str | None:
        """The cache secret, read from cache_secret_file if that is how it is given."""
        return self.cache_secret if self.cache_secret_file is None else _read_secret(self.cache_secret_file)

    def cache_options(self) -> dict[str, Any]:
        """The settings of the Redis chain cache, as `RedisChainCache.from_url` takes them."""
        return {
            "ttl_s": self.cache_answer_ttl_s,
            "partial_ttl_s": self.cache_checkpoint_ttl_s,
            "timeout_s": self.cache_timeout_s,
            "connect_timeout_s": self.cache_connect_timeout_s,
            "max_value_bytes": self.cache_max_value_bytes,
            "secret": self.cache_secret_value(),
        }

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
        )


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(secret) < MIN_CACHE_SECRET_CHARS:
        raise ValueError(
            f"the secret must be at least {MIN_CACHE_SECRET_CHARS} characters, {path} holds {len(secret)}"
        )
    return secret


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
