"""The committed gRPC stubs match proto/: regenerating them changes nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh() -> None:
    gen = load_generator()
    files = gen.render()  # protoc into a temporary folder
    assert {"v1/reasoning_pb2.py", "v1/reasoning_pb2.pyi", "v1/reasoning_pb2_grpc.py"} <= files.keys()
    for target in gen.TARGETS:
        stale = gen.stale(target, files)
        assert not stale, f"{target.relative_to(ROOT)}: stale {stale}; run: python scripts/gen_protos.py"


def test_grpc_module_imports_its_messages_relatively() -> None:
    text = (ROOT / "service/powersampling/_proto/v1/reasoning_pb2_grpc.py").read_text()
    assert "from . import reasoning_pb2" in text and "from powersampling.v1" not in text
