"""Every telemetry test starts from an environment without OTEL_* settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from powersampling.telemetry.otel import TRACES_FILE_ENV

from tests.telemetry.helpers import OtlpReceiver


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_") or name == TRACES_FILE_ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
