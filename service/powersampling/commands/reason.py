"""`powersampling reason "PROMPT"`: answer one prompt from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from powersampling.api import ReasonResult, reason
from powersampling.engines.base import Engine
from powersampling.engines.factory import ENGINES, load_engine
from powersampling.errors import InvalidArgument
from powersampling.events import BlockFinished, ChainStarted, SamplerEvent, SmcChunkFinished, SmcSweepFinished
from powersampling.models import DEFAULT_MODEL
from powersampling.params import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PARTICLES,
    DEFAULT_RAMP_TOKENS,
    DEFAULT_RESAMPLE_THRESHOLD,
    DEFAULT_SWEEPS,
    SMC_FIELDS,
    Method,
    SamplingParams,
)


def add_reason_command(subparsers: Any) -> None:
    defaults = SamplingParams()
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
    p.add_argument("--method", default=defaults.method.value, choices=[m.value for m in Method])
    p.add_argument("--alpha", type=float, default=defaults.alpha, help="power of the target p^alpha")
    p.add_argument("--proposal-temperature", type=float, default=None, help="default 1/alpha")
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help=f"tokens per block (power; default {defaults.block_size})",
    )
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument(
        "--mcmc-steps",
        type=int,
        default=None,
        help=f"MCMC steps per block (power; default {defaults.mcmc_steps})",
    )
    smc = p.add_argument_group("method smc (Power-SMC)")
    smc.add_argument(
        "--particles", type=int, default=None, help=f"particles per sweep (default {DEFAULT_PARTICLES})"
    )
    smc.add_argument(
        "--sweeps",
        type=int,
        default=None,
        help=f"sweeps (default {DEFAULT_SWEEPS}: plain SMC; more: particle independent MH, exact)",
    )
    smc.add_argument(
        "--resample-threshold",
        type=float,
        default=None,
        help=f"resample when ESS < this x particles, in (0, 1] (default {DEFAULT_RESAMPLE_THRESHOLD})",
    )
    smc.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=f"tokens between ESS checks (default {DEFAULT_CHUNK_SIZE})",
    )
    smc.add_argument(
        "--ramp-tokens",
        type=int,
        default=None,
        help=f"alpha-ramp length in tokens (default {DEFAULT_RAMP_TOKENS})",
    )
    p.add_argument("--budget", type=int, default=None, help="cap on all proposal tokens of the request")
    p.add_argument("--seed", type=int, default=None, help="random seed (drawn and reported when omitted)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("-n", "--samples", dest="n", type=int, default=1, help="independent samples")
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
    """Prints one line per finished block to stderr (only on a terminal)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.enabled = sys.stderr.isatty()

    def __call__(self, event: SamplerEvent) -> None:
        if not self.enabled:
            return
        chain = f"chain {event.chain_index} " if self.params.n > 1 else ""
        if isinstance(event, SmcChunkFinished):
            print(
                f"  {chain}sweep {event.sweep_index + 1}/{event.num_sweeps} chunk {event.chunk_index + 1}: "
                f"{len(event.leader_token_ids)} tokens, ESS {event.ess:.2f}"
                + (" (resampled)" if event.resampled else "")
                + f", {event.particles_alive} alive, {event.unique_ancestors} ancestors, "
                f"spent {event.tokens_spent}",
                file=sys.stderr,
                flush=True,
            )
            return
        if isinstance(event, SmcSweepFinished):
            verdict = "kept" if event.accepted else "rejected"
            print(
                f"  {chain}sweep {event.sweep_index + 1}/{event.num_sweeps}: "
                f"log Z-hat {event.log_z_hat:.3f}, answer {verdict}",
                file=sys.stderr,
                flush=True,
            )
            return
        if isinstance(event, ChainStarted) and event.chain_index == 0:
            if self.params.method is Method.SMC:
                print(
                    f"sampling: {self.params.effective_particles} particles x {self.params.effective_sweeps} "
                    f"sweep(s), seed {self.params.seed}",
                    file=sys.stderr,
                )
            else:
                print(f"sampling: {event.num_blocks} block(s), seed {self.params.seed}", file=sys.stderr)
        if isinstance(event, BlockFinished):
            s = event.state
            rate = s.accepted_steps / s.mcmc_steps if s.mcmc_steps else 0.0
            budget = f"/{self.params.token_budget}" if self.params.token_budget else ""
            print(
                f"  {chain}block {event.block_index + 1}/{event.num_blocks}: {len(s.token_ids)} tokens, "
                f"{s.mcmc_steps} steps, acceptance {rate:.2f}, spent {s.tokens_spent}{budget}"
                + (" (earlier text revised)" if event.revised else ""),
                file=sys.stderr,
                flush=True,
            )


def run_reason(args: argparse.Namespace) -> int:
    from powersampling.api import make_params

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = make_params(
        method=args.method,
        alpha=args.alpha,
        proposal_temperature=args.proposal_temperature,
        max_new_tokens=args.max_new_tokens,
        token_budget=args.budget,
        seed=args.seed,
        stop=tuple(args.stop),
        n=args.n,
        **method_options(args),
    )
    engine = load_cli_engine(args.engine, args.model, args.device)
    results = reason(prompt, engine, params, chat=args.chat, on_event=BlockProgress(params))
    if args.json:
        print(json.dumps(result_json(results), ensure_ascii=False))
    else:
        for i, r in enumerate(results):
            if len(results) > 1:
                print(f"--- sample {i}")
            print(r.text)
        if sys.stderr.isatty():
            print(summary_line(results[0]), file=sys.stderr)
    return 0


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method-specific flags that were given; a flag of another method is an error naming it.

    Power sampling's block_size and mcmc_steps keep their defaults when omitted; smc does not use them.
    """
    given = {name: getattr(args, name) for name in ("block_size", "mcmc_steps", *SMC_FIELDS)}
    given = {name: value for name, value in given.items() if value is not None}
    if args.method == Method.SMC.value:
        for name in ("block_size", "mcmc_steps"):
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
