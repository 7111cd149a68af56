"""Quality benchmarks: datasets with answer checkers, a sandbox for generated code, metrics, a runner.

from powersampling.bench import BenchConfig, load_dataset, run_quality
summary = run_quality(engine, load_dataset("arithmetic"), ["greedy", "sample", "power"],
                      BenchConfig(alpha=4, mcmc_steps=2, samples=4), "runs/arith")
"""

from powersampling.bench.datasets import DATASETS, Dataset, Grade, Problem, load_dataset
from powersampling.bench.metrics import accuracy, pass_at_k, wilson_interval
from powersampling.bench.runner import METHODS, BenchConfig, MethodSpec, register_method, run_quality

__all__ = [
    "DATASETS",
    "METHODS",
    "BenchConfig",
    "Dataset",
    "Grade",
    "MethodSpec",
    "Problem",
    "accuracy",
    "load_dataset",
    "pass_at_k",
    "register_method",
    "run_quality",
    "wilson_interval",
]
