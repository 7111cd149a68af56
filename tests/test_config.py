"""ServerConfig: POWERSAMPLING_* environment, overrides on top, errors that name the setting."""

from __future__ import annotations

import pytest
from powersampling.config import ServerConfig, load_config
from powersampling.errors import InvalidArgument
from powersampling.params import Method, SamplingParams

from tests.server.support import no_server_environment  # noqa: F401


def test_defaults() -> None:
    config = load_config()
    assert (config.host, config.port, config.engine, config.device) == ("0.0.0.0", 50051, "torch", "auto")
    assert config.model == "qwen2.5-coder-0.5b-instruct" and config.redis_url is None
    assert (config.max_concurrent_requests, config.max_queue, config.max_samples_per_request) == (4, 16, 16)
    assert config.max_prompt_chars == 200_000 and config.max_message_bytes == 4 << 20
    assert config.drain_timeout_s == 30 and not config.auth_enabled and not config.tls_enabled
    assert config.default_params() == SamplingParams()  # the paper's defaults


def test_environment_then_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERSAMPLING_PORT", "6000")
    monkeypatch.setenv("POWERSAMPLING_MAX_QUEUE", "2")
    monkeypatch.setenv("POWERSAMPLING_AUTH_TOKENS", '{"s3cret-xyz": "acme"}')
    monkeypatch.setenv("POWERSAMPLING_DEFAULT_METHOD", "greedy")
    config = load_config(port=7000)
    assert (config.port, config.max_queue) == (7000, 2)
    assert config.auth_tokens == {"s3cret-xyz": "acme"} and config.auth_enabled
    assert config.default_params().method is Method.GREEDY
    assert "s3cret" not in repr(config)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"port": 70000}, "port"),
        ({"max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"tls_cert_file": "cert.pem"}, "tls_key_file"),
        ({"tls_key_file": "key.pem"}, "tls_key_file"),
        ({"default_alpha": 0.5}, "default_alpha"),
        ({"default_token_budget": 10, "default_max_new_tokens": 20}, "default_token_budget"),
        ({"log_level": "LOUD"}, "log_level"),
    ],
)
def test_invalid_settings_name_the_setting(settings: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_config(**settings)
    assert info.value.field == field and "\n" not in info.value.message


def test_invalid_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERSAMPLING_DRAIN_TIMEOUT_S", "-1")
    with pytest.raises(InvalidArgument, match=r"^drain_timeout_s: "):
        load_config()


def test_tls_needs_both_files() -> None:
    config = ServerConfig(tls_cert_file="c.pem", tls_key_file="k.pem")
    assert config.tls_enabled


def test_engine_knobs_reach_the_engine_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERSAMPLING_VLLM_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("POWERSAMPLING_VLLM_DISTRIBUTED_EXECUTOR_BACKEND", "ray")
    config = load_config(
        engine="vllm",
        device="cuda",
        engine_max_batch_size=128,
        vllm_pipeline_parallel_size=2,
        vllm_data_parallel_size=3,
        vllm_gpu_memory_utilization=0.5,
        vllm_max_model_len=4096,
        vllm_num_logprobs=64,
    )
    assert config.engine_options() == {
        "device": "cuda",
        "max_num_seqs": 128,
        "num_logprobs": 64,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 4,
        "pipeline_parallel_size": 2,
        "data_parallel_size": 3,
        "distributed_executor_backend": "ray",
    }
    with pytest.raises(InvalidArgument, match=r"^vllm_tensor_parallel_size: applies to the vllm engine only"):
        load_config(engine="torch")  # the environment still sets a vllm knob
    monkeypatch.delenv("POWERSAMPLING_VLLM_TENSOR_PARALLEL_SIZE")
    monkeypatch.delenv("POWERSAMPLING_VLLM_DISTRIBUTED_EXECUTOR_BACKEND")
    torch_config = load_config(engine="torch", device="cpu", engine_max_batch_size=8)
    assert torch_config.engine_options() == {"device": "cpu", "max_batch_size": 8}
    torch_config = load_config(engine="torch", torch_prefix_cache_tokens=0, torch_continuous_batching=False)
    assert torch_config.engine_options() == {
        "device": "auto",
        "prefix_cache_tokens": 0,
        "continuous_batching": False,
    }
    assert load_config(engine="toy").engine_options() == {}


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"engine": "torch", "vllm_tensor_parallel_size": 2}, "vllm_tensor_parallel_size"),
        ({"engine": "toy", "vllm_distributed_executor_backend": "ray"}, "vllm_distributed_executor_backend"),
        ({"engine": "toy", "engine_max_batch_size": 4}, "engine_max_batch_size"),
        ({"engine": "vllm", "torch_prefix_cache_tokens": 4096}, "torch_prefix_cache_tokens"),
        ({"engine": "toy", "torch_continuous_batching": False}, "torch_continuous_batching"),
        ({"engine": "torch", "torch_prefix_cache_tokens": -1}, "torch_prefix_cache_tokens"),
        (
            {"engine": "vllm", "vllm_distributed_executor_backend": "carrier-pigeon"},
            "vllm_distributed_executor_backend",
        ),
        ({"engine": "vllm", "vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization"),
        ({"engine": "vllm", "vllm_data_parallel_size": 0}, "vllm_data_parallel_size"),
        ({"engine": "onnx"}, "engine"),
    ],
)
def test_engine_knobs_for_another_engine_are_refused(settings: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_config(**settings)
    assert info.value.field == field and "\n" not in info.value.message
