from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_POWER: _ClassVar[Method]
    METHOD_SAMPLE: _ClassVar[Method]
    METHOD_LOW_TEMP: _ClassVar[Method]
    METHOD_GREEDY: _ClassVar[Method]
    METHOD_SMC: _ClassVar[Method]

class CachePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_POLICY_UNSPECIFIED: _ClassVar[CachePolicy]
    CACHE_POLICY_USE: _ClassVar[CachePolicy]
    CACHE_POLICY_BYPASS: _ClassVar[CachePolicy]
    CACHE_POLICY_REFRESH: _ClassVar[CachePolicy]

class CacheStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STATUS_UNSPECIFIED: _ClassVar[CacheStatus]
    CACHE_STATUS_HIT: _ClassVar[CacheStatus]
    CACHE_STATUS_RESUMED: _ClassVar[CacheStatus]
    CACHE_STATUS_MISS: _ClassVar[CacheStatus]
    CACHE_STATUS_BYPASS: _ClassVar[CacheStatus]
    CACHE_STATUS_DISABLED: _ClassVar[CacheStatus]
    CACHE_STATUS_UNCACHEABLE: _ClassVar[CacheStatus]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
METHOD_UNSPECIFIED: Method
METHOD_POWER: Method
METHOD_SAMPLE: Method
METHOD_LOW_TEMP: Method
METHOD_GREEDY: Method
METHOD_SMC: Method
CACHE_POLICY_UNSPECIFIED: CachePolicy
CACHE_POLICY_USE: CachePolicy
CACHE_POLICY_BYPASS: CachePolicy
CACHE_POLICY_REFRESH: CachePolicy
CACHE_STATUS_UNSPECIFIED: CacheStatus
CACHE_STATUS_HIT: CacheStatus
CACHE_STATUS_RESUMED: CacheStatus
CACHE_STATUS_MISS: CacheStatus
CACHE_STATUS_BYPASS: CacheStatus
CACHE_STATUS_DISABLED: CacheStatus
CACHE_STATUS_UNCACHEABLE: CacheStatus
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReasonRequest(_message.Message):
    __slots__ = ("text", "messages", "token_ids", "method", "alpha", "proposal_temperature", "block_size", "max_new_tokens", "mcmc_steps", "token_budget", "seed", "stop", "n", "particles", "sweeps", "resample_threshold", "chunk_size", "ramp_tokens", "cache_policy", "chat", "tenant")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MCMC_STEPS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    PARTICLES_FIELD_NUMBER: _ClassVar[int]
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    RESAMPLE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    RAMP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    text: str
    messages: ChatMessages
    token_ids: TokenIds
    method: Method
    alpha: float
    proposal_temperature: float
    block_size: int
    max_new_tokens: int
    mcmc_steps: int
    token_budget: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    n: int
    particles: int
    sweeps: int
    resample_threshold: float
    chunk_size: int
    ramp_tokens: int
    cache_policy: CachePolicy
    chat: bool
    tenant: str
    def __init__(self, text: _Optional[str] = ..., messages: _Optional[_Union[ChatMessages, _Mapping]] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., method: _Optional[_Union[Method, str]] = ..., alpha: _Optional[float] = ..., proposal_temperature: _Optional[float] = ..., block_size: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., mcmc_steps: _Optional[int] = ..., token_budget: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ..., particles: _Optional[int] = ..., sweeps: _Optional[int] = ..., resample_threshold: _Optional[float] = ..., chunk_size: _Optional[int] = ..., ramp_tokens: _Optional[int] = ..., cache_policy: _Optional[_Union[CachePolicy, str]] = ..., chat: _Optional[bool] = ..., tenant: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("method", "alpha", "proposal_temperature", "block_size", "max_new_tokens", "mcmc_steps", "token_budget", "seed", "stop", "n", "particles", "sweeps", "resample_threshold", "chunk_size", "ramp_tokens")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MCMC_STEPS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    PARTICLES_FIELD_NUMBER: _ClassVar[int]
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    RESAMPLE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    RAMP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    method: Method
    alpha: float
    proposal_temperature: float
    block_size: int
    max_new_tokens: int
    mcmc_steps: int
    token_budget: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    n: int
    particles: int
    sweeps: int
    resample_threshold: float
    chunk_size: int
    ramp_tokens: int
    def __init__(self, method: _Optional[_Union[Method, str]] = ..., alpha: _Optional[float] = ..., proposal_temperature: _Optional[float] = ..., block_size: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., mcmc_steps: _Optional[int] = ..., token_budget: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ..., particles: _Optional[int] = ..., sweeps: _Optional[int] = ..., resample_threshold: _Optional[float] = ..., chunk_size: _Optional[int] = ..., ramp_tokens: _Optional[int] = ...) -> None: ...

class ReasonEvent(_message.Message):
    __slots__ = ("started", "progress", "final")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    started: Started
    progress: Progress
    final: Final
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("request_id", "cache_status", "resumed_from_block", "prompt_tokens", "seed", "num_blocks", "params", "temperature", "model", "engine")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_STATUS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_BLOCK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    cache_status: CacheStatus
    resumed_from_block: int
    prompt_tokens: int
    seed: int
    num_blocks: int
    params: SamplingParams
    temperature: float
    model: str
    engine: str
    def __init__(self, request_id: _Optional[str] = ..., cache_status: _Optional[_Union[CacheStatus, str]] = ..., resumed_from_block: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., num_blocks: _Optional[int] = ..., params: _Optional[_Union[SamplingParams, _Mapping]] = ..., temperature: _Optional[float] = ..., model: _Optional[str] = ..., engine: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("chain_index", "block_index", "num_blocks", "text", "revised", "acceptance_rate", "change_rate", "mcmc_steps", "tokens_spent", "token_budget", "num_tokens", "finished", "sweep_index", "num_sweeps", "ess", "resampled", "unique_ancestors", "particles_alive", "log_z_hat", "sweep_finished", "sweep_accepted")
    CHAIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REVISED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_RATE_FIELD_NUMBER: _ClassVar[int]
    MCMC_STEPS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SPENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SWEEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SWEEPS_FIELD_NUMBER: _ClassVar[int]
    ESS_FIELD_NUMBER: _ClassVar[int]
    RESAMPLED_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    PARTICLES_ALIVE_FIELD_NUMBER: _ClassVar[int]
    LOG_Z_HAT_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    SWEEP_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    chain_index: int
    block_index: int
    num_blocks: int
    text: str
    revised: bool
    acceptance_rate: float
    change_rate: float
    mcmc_steps: int
    tokens_spent: int
    token_budget: int
    num_tokens: int
    finished: bool
    sweep_index: int
    num_sweeps: int
    ess: float
    resampled: bool
    unique_ancestors: int
    particles_alive: int
    log_z_hat: float
    sweep_finished: bool
    sweep_accepted: bool
    def __init__(self, chain_index: _Optional[int] = ..., block_index: _Optional[int] = ..., num_blocks: _Optional[int] = ..., text: _Optional[str] = ..., revised: _Optional[bool] = ..., acceptance_rate: _Optional[float] = ..., change_rate: _Optional[float] = ..., mcmc_steps: _Optional[int] = ..., tokens_spent: _Optional[int] = ..., token_budget: _Optional[int] = ..., num_tokens: _Optional[int] = ..., finished: _Optional[bool] = ..., sweep_index: _Optional[int] = ..., num_sweeps: _Optional[int] = ..., ess: _Optional[float] = ..., resampled: _Optional[bool] = ..., unique_ancestors: _Optional[int] = ..., particles_alive: _Optional[int] = ..., log_z_hat: _Optional[float] = ..., sweep_finished: _Optional[bool] = ..., sweep_accepted: _Optional[bool] = ...) -> None: ...

class AnswerStats(_message.Message):
    __slots__ = ("tokens_spent", "token_budget", "mcmc_steps", "accepted", "changed", "skipped", "acceptance_rate", "change_rate", "latency_ms", "log_prob", "smc")
    TOKENS_SPENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MCMC_STEPS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    SMC_FIELD_NUMBER: _ClassVar[int]
    tokens_spent: int
    token_budget: int
    mcmc_steps: int
    accepted: int
    changed: int
    skipped: int
    acceptance_rate: float
    change_rate: float
    latency_ms: float
    log_prob: float
    smc: SmcStats
    def __init__(self, tokens_spent: _Optional[int] = ..., token_budget: _Optional[int] = ..., mcmc_steps: _Optional[int] = ..., accepted: _Optional[int] = ..., changed: _Optional[int] = ..., skipped: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., change_rate: _Optional[float] = ..., latency_ms: _Optional[float] = ..., log_prob: _Optional[float] = ..., smc: _Optional[_Union[SmcStats, _Mapping]] = ...) -> None: ...

class SmcStats(_message.Message):
    __slots__ = ("particles", "sweeps", "accepted_sweeps", "resamples", "ess_min", "unique_ancestors", "log_z_hat")
    PARTICLES_FIELD_NUMBER: _ClassVar[int]
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SWEEPS_FIELD_NUMBER: _ClassVar[int]
    RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    ESS_MIN_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    LOG_Z_HAT_FIELD_NUMBER: _ClassVar[int]
    particles: int
    sweeps: int
    accepted_sweeps: int
    resamples: int
    ess_min: float
    unique_ancestors: int
    log_z_hat: float
    def __init__(self, particles: _Optional[int] = ..., sweeps: _Optional[int] = ..., accepted_sweeps: _Optional[int] = ..., resamples: _Optional[int] = ..., ess_min: _Optional[float] = ..., unique_ancestors: _Optional[int] = ..., log_z_hat: _Optional[float] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "stats", "seed", "chain_index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHAIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    stats: AnswerStats
    seed: int
    chain_index: int
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., stats: _Optional[_Union[AnswerStats, _Mapping]] = ..., seed: _Optional[int] = ..., chain_index: _Optional[int] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("answers", "model", "engine", "cache_hit", "cache_status", "request_id", "latency_ms", "prompt_tokens")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    CACHE_STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[Answer]
    model: str
    engine: str
    cache_hit: bool
    cache_status: CacheStatus
    request_id: str
    latency_ms: float
    prompt_tokens: int
    def __init__(self, answers: _Optional[_Iterable[_Union[Answer, _Mapping]]] = ..., model: _Optional[str] = ..., engine: _Optional[str] = ..., cache_hit: _Optional[bool] = ..., cache_status: _Optional[_Union[CacheStatus, str]] = ..., request_id: _Optional[str] = ..., latency_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_samples_per_request", "max_prompt_chars", "max_message_bytes", "max_stop_strings", "max_stop_length", "max_concurrent_requests", "max_queue", "max_mcmc_steps", "max_alpha", "max_new_tokens", "max_token_budget", "max_planned_tokens", "stream_idle_timeout_s", "stream_max_age_s", "max_particles", "max_sweeps")
    MAX_SAMPLES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_STRINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_MCMC_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_ALPHA_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAX_PLANNED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    STREAM_MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICLES_FIELD_NUMBER: _ClassVar[int]
    MAX_SWEEPS_FIELD_NUMBER: _ClassVar[int]
    max_samples_per_request: int
    max_prompt_chars: int
    max_message_bytes: int
    max_stop_strings: int
    max_stop_length: int
    max_concurrent_requests: int
    max_queue: int
    max_mcmc_steps: int
    max_alpha: float
    max_new_tokens: int
    max_token_budget: int
    max_planned_tokens: int
    stream_idle_timeout_s: float
    stream_max_age_s: float
    max_particles: int
    max_sweeps: int
    def __init__(self, max_samples_per_request: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_stop_strings: _Optional[int] = ..., max_stop_length: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_mcmc_steps: _Optional[int] = ..., max_alpha: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., max_token_budget: _Optional[int] = ..., max_planned_tokens: _Optional[int] = ..., stream_idle_timeout_s: _Optional[float] = ..., stream_max_age_s: _Optional[float] = ..., max_particles: _Optional[int] = ..., max_sweeps: _Optional[int] = ...) -> None: ...

class ServiceDescription(_message.Message):
    __slots__ = ("model", "engine", "fingerprint", "device", "max_context_tokens", "has_chat_template", "defaults", "limits", "version", "cache_enabled", "engine_settings", "cache_settings")
    class EngineSettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CacheSettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    engine: str
    fingerprint: str
    device: str
    max_context_tokens: int
    has_chat_template: bool
    defaults: SamplingParams
    limits: ServerLimits
    version: str
    cache_enabled: bool
    engine_settings: _containers.ScalarMap[str, str]
    cache_settings: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., engine: _Optional[str] = ..., fingerprint: _Optional[str] = ..., device: _Optional[str] = ..., max_context_tokens: _Optional[int] = ..., has_chat_template: _Optional[bool] = ..., defaults: _Optional[_Union[SamplingParams, _Mapping]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., version: _Optional[str] = ..., cache_enabled: _Optional[bool] = ..., engine_settings: _Optional[_Mapping[str, str]] = ..., cache_settings: _Optional[_Mapping[str, str]] = ...) -> None: ...
