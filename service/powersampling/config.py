"""Server configuration: one pydantic-settings model, read from `POWERSAMPLING_*` environment
variables and overridden by command-line flags (see `powersampling serve --help`)."""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from powersampling.cache.keys import MAX_TENANT_LENGTH
from powersampling.engines.factory import EngineName
from powersampling.errors import InvalidArgument
from powersampling.models import DEFAULT_MODEL
from powersampling.params import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PARTICLES,
    DEFAULT_RAMP_TOKENS,
    DEFAULT_RESAMPLE_THRESHOLD,
    DEFAULT_SWEEPS,
    MAX_BUDGET_LIMIT,
    MAX_PARTICLES,
    MAX_SWEEPS,
    MAX_TOKENS_LIMIT,
    SMC_FIELDS,
    Method,
    SamplingParams,
)

_PAPER = SamplingParams()  # the paper's defaults, as SamplingParams defines them
MIB = 1 << 20
MIN_CACHE_SECRET_CHARS = 16
# A DNS name: dot-separated labels of letters, digits and inner hyphens.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


class ServerConfig(BaseSettings):
    """Everything `powersampling serve` needs; environment: POWERSAMPLING_<FIELD>, e.g. POWERSAMPLING_PORT."""

    model_config = SettingsConfigDict(env_prefix="POWERSAMPLING_", extra="ignore", frozen=True)

    # Where to listen.
    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(50051, ge=0, le=65535, description="port to bind (0: any free port)")
    http_host: str | None = Field(
        None, description="address of the OpenAI-compatible HTTP API; unset: host's"
    )
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the OpenAI-compatible HTTP API (0: any free port); unset: off",
    )

    # What to serve.
    model: str = Field(DEFAULT_MODEL, min_length=1, description="model name or local Hugging Face folder")
    engine: EngineName = Field(
        "torch", description="engine that runs the model: torch, vllm, or toy (a demo without weights)"
    )
    device: str = Field("auto", min_length=1, description="device for the engine: auto, cpu, cuda, ...")

    # Engine knobs (unset: the engine's own default). vllm_* apply to the vllm engine only.
    engine_max_batch_size: int | None = Field(
        None, ge=1, le=65_536, description="sequences in one batch (torch) or running at once (vllm)"
    )
    torch_prefix_cache_tokens: int | None = Field(
        None,
        ge=0,
        description="tokens of prefix keys/values the torch engine keeps (0: no reuse; unset: 1 GiB)",
    )
    torch_continuous_batching: bool | None = Field(
        None, description="admit requests into the torch engine's running batch between decoding steps"
    )
    vllm_num_logprobs: int | None = Field(
        None, ge=1, le=1 << 20, description="top-K log p behind each log q (its tail is bounded)"
    )
    vllm_max_model_len: int | None = Field(
        None, ge=2, description="context length; unset: min(model's, 8192)"
    )
    vllm_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="share of each GPU's memory vLLM may take"
    )
    vllm_tensor_parallel_size: int | None = Field(
        None, ge=1, le=1024, description="GPUs each layer is split over"
    )
    vllm_pipeline_parallel_size: int | None = Field(
        None, ge=1, le=1024, description="stages the layers are split into"
    )
    vllm_data_parallel_size: int | None = Field(None, ge=1, le=1024, description="model replicas vLLM runs")
    vllm_distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = Field(
        None, description="how vLLM runs its workers (ray for several nodes); unset: vLLM chooses"
    )
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

    # Caps on one request's work (a request over one is refused with INVALID_ARGUMENT naming the field).
    max_new_tokens_limit: int = Field(
        32_768, ge=1, le=MAX_TOKENS_LIMIT, description="largest max_new_tokens a request may ask for"
    )
    max_token_budget: int = Field(
        5_000_000,
        ge=1,
        le=MAX_BUDGET_LIMIT,
        description="largest token_budget (per chain) a request may ask for",
    )
    max_planned_tokens: int = Field(
        20_000_000,
        ge=1,
        description="most proposal tokens one request may plan, worst case over all its chains "
        "(a token_budget bounds a chain's share)",
    )

    # Streams and connections.
    stream_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="end a stream whose client has read nothing for this long while the server "
        "waits to send (RESOURCE_EXHAUSTED), freeing its slot and stopping its sampling",
    )
    stream_max_age_s: float | None = Field(
        None, gt=0, description="end any stream running longer than this (DEADLINE_EXCEEDED); unset: no limit"
    )
    keepalive_time_s: float = Field(
        60.0, gt=0, le=86_400, description="ping a connection after this long without activity"
    )
    keepalive_timeout_s: float = Field(
        20.0, gt=0, le=3600, description="close a connection whose ping goes unanswered this long"
    )

    # Security.
    auth_token: str | None = Field(
        None,
        repr=False,
        description="shared bearer token every call but health checks must present; when tenant tokens "
        'are configured too it may use only the default tenant "". A flag shows in the process list: '
        "prefer the environment variable",
    )
    auth_tokens: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description='tokens bound to tenants, as JSON {"token": "tenant"}; accepted besides auth_token. '
        "A flag shows in the process list: prefer auth_tokens_file",
    )
    auth_tokens_file: Path | None = Field(
        None,
        description='file holding tenant tokens as a JSON object {"token": "tenant"}, merged with '
        "auth_tokens (keeps tokens out of the process list)",
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

    def cache_description(self) -> dict[str, str]:
        """The cache settings in force as Describe shows them: never the secret, only whether one is set."""
        options = self.cache_options()
        shown = {
            "answer_ttl_s": options["ttl_s"],
            "checkpoint_ttl_s": options["partial_ttl_s"],
            "timeout_s": options["timeout_s"],
            "connect_timeout_s": options["connect_timeout_s"],
            "max_value_bytes": options["max_value_bytes"],
        }
        return {name: str(value) for name, value in shown.items() if value is not None} | {
            "authenticated": str(options["secret"] is not None).lower()
        }

    # A knob set for another engine is refused rather than silently ignored (unset knobs are None).
    @field_validator(
        "torch_prefix_cache_tokens",
        "torch_continuous_batching",
        "vllm_num_logprobs",
        "vllm_max_model_len",
        "vllm_gpu_memory_utilization",
        "vllm_tensor_parallel_size",
        "vllm_pipeline_parallel_size",
        "vllm_data_parallel_size",
        "vllm_distributed_executor_backend",
    )
    @classmethod
    def _for_its_engine(cls, value: Any, info: ValidationInfo) -> Any:
        owner = str(info.field_name).split("_", 1)[0]  # torch_* or vllm_*
        engine = info.data.get("engine")
        if value is not None and engine is not None and engine != owner:
            raise ValueError(f"applies to the {owner} engine only (engine is {engine})")
        return value

    @field_validator("engine_max_batch_size")
    @classmethod
    def _not_for_toy(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("engine") == "toy":
            raise ValueError("does not apply to the toy engine")
        return value

    def engine_options(self) -> dict[str, Any]:
        """Keyword options for `load_engine` on `engine`: the knobs that are set, in the engine's names."""
        if self.engine == "toy":
            return {}
        options: dict[str, Any] = {"device": self.device}
        batch_name = "max_batch_size" if self.engine == "torch" else "max_num_seqs"
        if self.engine_max_batch_size is not None:
            options[batch_name] = self.engine_max_batch_size
        prefix = f"{self.engine}_"  # the knobs of this engine: torch_* or vllm_*
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.startswith(prefix) and value is not None:
                options[name.removeprefix(prefix)] = value
        return options

    @field_validator("host", "http_host")
    @classmethod
    def _host(cls, host: str | None) -> str | None:
        if host is None:
            return None
        try:
            ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"{host!r} is neither an IP address nor a host name") from None
        return host

    @field_validator("auth_token")
    @classmethod
    def _auth_token(cls, token: str | None) -> str | None:
        # An empty token must not silently turn authentication off.
        if token is not None and not token.strip():
            raise ValueError("must not be empty; leave the setting out to run without authentication")
        return token

    @field_validator("auth_tokens")
    @classmethod
    def _auth_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        _check_tenant_tokens(tokens)
        return tokens

    @field_validator("auth_tokens_file")
    @classmethod
    def _auth_tokens_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_tenant_tokens(path)
        return path

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_token) or bool(self.auth_tokens) or self.auth_tokens_file is not None

    def tenant_tokens(self) -> dict[str, str]:
        """Tenant tokens from auth_tokens and auth_tokens_file together (token → tenant)."""
        tokens = dict(self.auth_tokens)
        if self.auth_tokens_file is not None:
            tokens.update(read_tenant_tokens(self.auth_tokens_file))
        return tokens

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


def _check_tenant_tokens(tokens: dict[str, Any]) -> None:
    for token, tenant in tokens.items():
        if not token.strip():
            raise ValueError("a token must not be empty")
        if not isinstance(tenant, str):
            raise ValueError(f"the tenant of a token must be a string, got {type(tenant).__name__}")
        if len(tenant) > MAX_TENANT_LENGTH:
            raise ValueError(f"a tenant has at most {MAX_TENANT_LENGTH} characters, got {len(tenant)}")
        if any(unicodedata.category(c).startswith("C") for c in tenant):
            raise ValueError("a tenant must not contain control or unassigned characters")


def read_tenant_tokens(path: Path) -> dict[str, str]:
    """The {"token": "tenant"} JSON object in `path`; ValueError says what is wrong with it."""
    try:
        tokens = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON object: {exc}") from None
    if not isinstance(tokens, dict):
        raise ValueError(f'{path} must hold a JSON object {{"token": "tenant"}}')
    _check_tenant_tokens(tokens)
    return tokens


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
