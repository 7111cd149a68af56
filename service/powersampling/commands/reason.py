"""`powersampling reason "PROMPT"`: answer one prompt from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from powersampling.api import ReasonResult, make_params, reason
from powersampling.engines.base import Engine
from powersampling.engines.factory import ENGINES, load_engine
from powersampling.errors import InvalidArgument
from powersampling.events import BlockFinished, ChainStarted, SamplerEvent, SmcChunkFinished, SmcSweepFinished
from powersampling.models import DEFAULT_MODEL
from powersampling.params import SMC_FIELDS, Method, SamplingParams
from powersampling.sampling_flags import SAMPLING_FIELDS, Flag, add_sampling_flags, sampling_options

_POWER_ONLY = ("block_size", "mcmc_steps")  # left to method smc's refusal when given with it
_DEFAULTS = SamplingParams()
# `reason` offers every SamplingParams field as a flag; where its flags differ from the generated ones:
REASON_FLAGS = {
    "block_size": Flag(default=None, help=f"tokens per block (power; default {_DEFAULTS.block_size})"),
    "mcmc_steps": Flag(default=None, help=f"MCMC steps per block (power; default {_DEFAULTS.mcmc_steps})"),
    "token_budget": Flag(names=("--budget",)),
    "n": Flag(names=("-n", "--samples")),
}


def add_reason_command(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "reason",
        help="answer a prompt by power sampling (or a baseline)",
        description="Answer PROMPT by sampling from p(x)^alpha with block-wise Metropolis-Hastings "
        "(--method power) or Power-SMC (--method smc), or by a plain baseline.",
    )
    p.add_argument("prompt", help="the prompt text; '-' reads it from standard input")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name or local folder (default {DEFAULT_MODEL})"
    )
    p.add_argument("--engine", default="torch", choices=ENGINES, help="engine that runs the model")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda")
    add_sampling_flags(p, SAMPLING_FIELDS, flags=REASON_FLAGS)
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat", dest="chat", action="store_true", default=None, help="force the chat template"
    )
    chat.add_argument(
        "--raw", dest="chat", action="store_false", help="send the prompt without chat template"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run_reason)


def load_cli_engine(engine: str, model: str, device: str) -> Engine:
    if engine == "toy":
        return load_engine(engine="toy")
    return load_engine(model, engine=engine, device=device)


class BlockProgress:
    """Progress of a run on a terminal: one line per finished block (power) or chunk and sweep
    (smc) on stderr, with the tokens spent against the budget and the acceptance so far.

    Silent when `stream` (default stderr) is not a terminal or `quiet` is set (``--json``), so
    nothing extra ever lands in a pipe or a log.
    """

    def __init__(self, params: SamplingParams, *, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.params = params
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and self.stream.isatty()

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _spent(self, tokens_spent: int) -> str:
        budget = self.params.token_budget
        return f"spent {tokens_spent}/{budget} tokens" if budget else f"spent {tokens_spent} tokens"

    def __call__(self, event: SamplerEvent) -> None:
        if not self.enabled:
            return
        chain = f"chain {event.chain_index} " if self.params.n > 1 else ""
        if isinstance(event, SmcChunkFinished):
            self._print(
                f"  {chain}sweep {event.sweep_index + 1}/{event.num_sweeps} chunk {event.chunk_index + 1}: "
                f"{len(event.leader_token_ids)} tokens, ESS {event.ess:.2f}"
                + (" (resampled)" if event.resampled else "")
                + f", {event.particles_alive} alive, {event.unique_ancestors} ancestors, "
                + self._spent(event.tokens_spent)
            )
        elif isinstance(event, SmcSweepFinished):
            verdict = "kept" if event.accepted else "rejected"
            state = event.state
            acceptance = f", acceptance {state.acceptance_rate:.2f}" if state.mcmc_steps else ""
            self._print(
                f"  {chain}sweep {event.sweep_index + 1}/{event.num_sweeps}: "
                f"log Z-hat {event.log_z_hat:.3f}, answer {verdict}{acceptance}, "
                + self._spent(state.tokens_spent)
            )
        elif isinstance(event, ChainStarted) and event.chain_index == 0:
            if self.params.method is Method.SMC:
                self._print(
                    f"sampling: {self.params.effective_particles} particles x "
                    f"{self.params.effective_sweeps} sweep(s), seed {self.params.seed}"
                )
            else:
                self._print(f"sampling: {event.num_blocks} block(s), seed {self.params.seed}")
        elif isinstance(event, BlockFinished):
            s = event.state
            self._print(
                f"  {chain}block {event.block_index + 1}/{event.num_blocks}: {len(s.token_ids)} tokens, "
                f"{s.mcmc_steps} steps, acceptance {s.acceptance_rate:.2f}, "
                + self._spent(s.tokens_spent)
                + (" (earlier text revised)" if event.revised else "")
            )


def run_reason(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    shared = [name for name in SAMPLING_FIELDS if name not in (*_POWER_ONLY, *SMC_FIELDS)]
    params = make_params(**sampling_options(args, shared), **method_options(args))
    engine = load_cli_engine(args.engine, args.model, args.device)
    progress = BlockProgress(params, quiet=args.json)
    results = reason(prompt, engine, params, chat=args.chat, on_event=progress)
    if args.json:
        print(json.dumps(result_json(results), ensure_ascii=False))
    else:
        for i, r in enumerate(results):
            if len(results) > 1:
                print(f"--- sample {i}")
            print(r.text)
        if progress.enabled:
            print(summary_line(results[0]), file=sys.stderr)
    return 0


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method-specific flags that were given; a flag of another method is an error naming it.

    Power sampling's block_size and mcmc_steps keep their defaults when omitted; smc does not use them.
    """
    given = sampling_options(args, (*_POWER_ONLY, *SMC_FIELDS))
    given = {name: value for name, value in given.items() if value is not None}
    if args.method == Method.SMC.value:
        for name in _POWER_ONLY:
            if name in given:
                raise InvalidArgument(
                    name, "is not used by method smc (it takes particles, sweeps, chunk_size)"
                )
    return given  # SamplingParams names an SMC flag given with another method


def summary_line(r: ReasonResult) -> str:
    """One line on what the first answer cost (stderr, on a terminal)."""
    if r.smc is not None:
        s = r.smc
        how = (
            f"SMC {s.particles} particles x {s.sweeps} sweep(s), {s.accepted_sweeps} accepted, "
            f"{s.resamples} resamples, ESS min {s.ess_min:.2f}, log Z-hat {s.log_z_hat:.3f}"
        )
    else:
        how = f"{r.mcmc_steps} MCMC steps, acceptance {r.acceptance_rate:.2f}, changed {r.change_rate:.2f}"
    return f"[{r.finish_reason}; {r.tokens_spent} tokens; {how}; {r.latency_s:.1f} s; seed {r.seed}]"


def result_json(results: list[ReasonResult]) -> dict[str, Any]:
    """The first sample's fields; with several samples, all of them under "samples" too."""
    out = results[0].to_dict(with_token_ids=False)
    if len(results) > 1:
        out["samples"] = [r.to_dict(with_token_ids=False) for r in results]
    return out
