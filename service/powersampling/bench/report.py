"""Summaries of a benchmark folder: summary.json, summary.md and plots (matplotlib, Agg backend).

The summary is computed from the per-problem result files alone, so it can be rebuilt at any time
(``write_report``) and always reflects every problem recorded, including those of resumed runs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from powersampling.bench.metrics import Interval, accuracy, multiplier, paired_difference, pass_at_k
from powersampling.bench.runner import load_records

BASELINE = "sample"


def _subset_stats(records: Sequence[dict[str, Any]], k_max: int, deterministic: bool) -> dict[str, Any]:
    counts = [(r["n"], r["correct"]) for r in records]
    acc = accuracy(counts)
    pass_k: dict[str, float] = {}
    for k in range(1, k_max + 1):
        if deterministic:
            pass_k[str(k)] = acc.value  # every sample would be the same one
        elif all(n >= k for n, _ in counts):
            pass_k[str(k)] = math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return {"problems": len(records), "accuracy": asdict(acc), "pass_at_k": pass_k}


def summarize_method(
    records: Sequence[dict[str, Any]], k_max: int, deterministic: bool, wall: dict[str, float] | None
) -> dict[str, Any]:
    """Accuracy (all problems and each tag), pass@k, tokens, MCMC statistics, wall time of one method."""
    samples = [s for r in records for s in r["samples"]]
    subsets = {"all": _subset_stats(records, k_max, deterministic)}
    for tag in sorted({t for r in records for t in r["tags"]}):
        subsets[tag] = _subset_stats([r for r in records if tag in r["tags"]], k_max, deterministic)
    steps = sum(s["mcmc_steps"] for s in samples)
    tokens = math.fsum(s["tokens_spent"] for s in samples) / len(samples)
    out: dict[str, Any] = {
        "problems": len(records),
        "samples_per_problem": max(r["n"] for r in records),
        "subsets": subsets,
        "tokens_per_answer": tokens,
        "generated_tokens_per_answer": math.fsum(s["generated_tokens"] for s in samples) / len(samples),
        "finish_reasons": dict(Counter(s["finish_reason"] for s in samples)),
        "mean_latency_s": math.fsum(r["latency_s"] for r in records) / len(records),
        "mcmc": {
            "steps_per_answer": steps / len(samples),
            "acceptance_rate": sum(s["accepted_steps"] for s in samples) / steps if steps else None,
            "change_rate": sum(s["changed_steps"] for s in samples) / steps if steps else None,
            "skipped_steps": sum(s["skipped_steps"] for s in samples),
        },
    }
    smc = [s["smc"] for s in samples if s.get("smc")]  # method smc (older records have no key)
    if smc:
        out["smc"] = {
            "particles": max(x["particles"] for x in smc),
            "sweeps_per_answer": math.fsum(x["sweeps"] for x in smc) / len(smc),
            "resamples_per_answer": math.fsum(x["resamples"] for x in smc) / len(smc),
            "ess_min_mean": math.fsum(x["ess_min"] for x in smc) / len(smc),
            "unique_ancestors_mean": math.fsum(x["unique_ancestors"] for x in smc) / len(smc),
        }
    if wall and wall.get("problems"):
        out["wall_s"] = wall["wall_s"]
        out["wall_s_per_problem"] = wall["wall_s"] / wall["problems"]
    return out


def summarize(out_dir: Path, run_info: dict[str, Any]) -> dict[str, Any]:
    """The summary of every method of `run_info` over its problems, from the results files."""
    problem_ids = list(run_info["problems"])
    wanted = set(problem_ids)
    k_max = int(run_info["config"]["samples"])
    walls: dict[str, dict[str, float]] = {}
    if (out_dir / "walltime.json").exists():
        walls = json.loads((out_dir / "walltime.json").read_text())
    methods: dict[str, Any] = {}
    kept: dict[str, list[dict[str, Any]]] = {}
    per_problem: dict[str, dict[str, float]] = {}
    missing: dict[str, int] = {}
    for m in run_info["methods"]:
        name = m["name"]
        records = [r for r in load_records(out_dir / "results" / f"{name}.jsonl") if r["id"] in wanted]
        by_id = {r["id"]: r for r in records}
        if len(by_id) < len(wanted):
            missing[name] = len(wanted) - len(by_id)
        if not by_id:
            continue
        ordered = [by_id[i] for i in problem_ids if i in by_id]
        methods[name] = {
            "description": m.get("description", ""),
            "options": m.get("options", {}),
            **summarize_method(ordered, k_max, bool(m.get("deterministic")), walls.get(name)),
        }
        per_problem[name] = {r["id"]: r["correct"] / r["n"] for r in ordered}
        kept[name] = ordered
    if BASELINE in methods:
        base_tokens = methods[BASELINE]["tokens_per_answer"]
        for stats in methods.values():
            stats["token_multiplier"] = multiplier(stats["tokens_per_answer"], base_tokens)
    paired: dict[str, Any] = {}
    if BASELINE in per_problem:
        base = per_problem[BASELINE]
        for name, scores in per_problem.items():
            if name == BASELINE:
                continue
            common = [i for i in problem_ids if i in scores and i in base]
            if common:
                diff = paired_difference([scores[i] for i in common], [base[i] for i in common])
                paired[name] = {**asdict(diff), "problems": len(common)}
    return {
        "dataset": run_info["dataset"],
        "engine": run_info["engine"],
        "config": run_info["config"],
        "problems": len(problem_ids),
        "methods": methods,
        f"difference_vs_{BASELINE}": paired,
        "diagnostics": diagnostics(kept, float(run_info["config"].get("alpha", 4.0))),
        "missing": missing,
    }


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def diagnostics(records: dict[str, list[dict[str, Any]]], alpha: float) -> dict[str, Any]:
    """Evidence for judging power sampling beyond accuracy.

    * ``target_on_seen_answers``: per problem, every distinct answer (token sequence) any method
      produced, with its log p (stop string included); the accuracy that p and p^alpha would have if
      these were the only answers (mean over problems), and the share of p's mass they cover. When p^alpha's
      estimate is no better than low-temperature sampling, no sampler of p^alpha can beat it here.
      With T = 1 draws, ``p^alpha_is`` estimates p^alpha's accuracy by self-normalised importance
      weights p(x)^(alpha-1) instead (consistent, biased for few samples per problem).
    * ``power_vs_low_temp``: both methods share request seeds and the proposal temperature, so a
      power chain starts from the very draw low-temp returned; this counts how often the MH steps
      changed that answer, in which direction, and by how much log p.
    """
    out: dict[str, Any] = {}
    seen: dict[str, dict[str, tuple[float, bool]]] = {}
    tags: dict[str, list[str]] = {}
    for recs in records.values():
        for r in recs:
            answers = seen.setdefault(r["id"], {})
            tags[r["id"]] = r["tags"]
            for s in r["samples"]:
                key = json.dumps(s["token_ids"]) if "token_ids" in s else s["text"]
                answers.setdefault(key, (float(s["log_prob"]), bool(s["correct"])))
    if seen:
        subsets: dict[str, Any] = {}
        for subset in ["all", *sorted({t for ts in tags.values() for t in ts})]:
            ids = [i for i in seen if subset == "all" or subset in tags[i]]
            row: dict[str, Any] = {"problems": len(ids)}
            for label, a in (("p", 1.0), ("p^alpha", alpha)):
                accs = []
                for i in ids:
                    lps = [a * lp for lp, _ in seen[i].values()]
                    right = [a * lp for lp, ok in seen[i].values() if ok]
                    accs.append(math.exp(_logsumexp(right) - _logsumexp(lps)) if right else 0.0)
                row[label] = math.fsum(accs) / len(accs)
            if "sample" in records:
                ests = []
                for r in records["sample"]:
                    if r["id"] in ids:
                        w = [(alpha - 1.0) * float(x["log_prob"]) for x in r["samples"]]
                        right = [v for v, x in zip(w, r["samples"], strict=True) if x["correct"]]
                        ests.append(math.exp(_logsumexp(right) - _logsumexp(w)) if right else 0.0)
                if ests:
                    row["p^alpha_is"] = math.fsum(ests) / len(ests)
            row["seen_mass"] = math.fsum(
                math.exp(_logsumexp([lp for lp, _ in seen[i].values()])) for i in ids
            ) / len(ids)
            subsets[subset] = row
        out["target_on_seen_answers"] = {"alpha": alpha, "subsets": subsets}
    if "power" in records and "low-temp" in records:
        low = {r["id"]: r for r in records["low-temp"]}
        counts: Counter[str] = Counter()
        gains: list[float] = []
        for r in records["power"]:
            if r["id"] not in low:
                continue
            for a, b in zip(r["samples"], low[r["id"]]["samples"], strict=False):
                counts["chains"] += 1
                if a["text"] == b["text"]:
                    counts["unchanged"] += 1
                    continue
                counts["changed"] += 1
                gains.append(a["log_prob"] - b["log_prob"])
                if a["correct"] and not b["correct"]:
                    counts["wrong_to_right"] += 1
                elif b["correct"] and not a["correct"]:
                    counts["right_to_wrong"] += 1
                else:
                    counts["same_correctness"] += 1
        if counts["chains"]:
            out["power_vs_low_temp"] = {
                **{
                    k: counts[k]
                    for k in ("chains", "unchanged", "changed", "wrong_to_right", "right_to_wrong")
                },
                "same_correctness": counts["same_correctness"],
                "mean_logp_gain_when_changed": math.fsum(gains) / len(gains) if gains else None,
                "logp_increased": sum(g > 0 for g in gains),
            }
    return out


def _iv(d: dict[str, float]) -> str:
    return Interval(d["value"], d["low"], d["high"]).fmt()


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{format(value, spec)}{suffix}"


def markdown(summary: dict[str, Any]) -> str:
    """Tables: accuracy, pass@k, cost and MCMC statistics per method; pass@k per tagged subset."""
    methods: dict[str, Any] = summary["methods"]
    k_max = int(summary["config"]["samples"])
    ks = [str(k) for k in range(1, k_max + 1)]
    paired = summary.get(f"difference_vs_{BASELINE}", {})
    lines = [
        f"Dataset `{summary['dataset']['name']}`, {summary['problems']} problems, "
        f"model `{summary['engine']['model']}` ({summary['engine']['engine']} engine), "
        f"{k_max} samples per problem (greedy: 1), seed {summary['config']['seed']}.",
        "",
        "| method | accuracy [95% CI] | Δ vs sample [95% CI] | "
        + " | ".join(f"pass@{k}" for k in ks)
        + " | tokens/answer | × sample | wall s/problem | accept | change |",
        "|---|---|---|" + "---|" * len(ks) + "---|---|---|---|---|",
    ]
    for name, m in methods.items():
        sub = m["subsets"]["all"]
        pk = " | ".join(f"{sub['pass_at_k'][k]:.2f}" if k in sub["pass_at_k"] else "–" for k in ks)
        mult = m.get("token_multiplier")
        mc = m["mcmc"]
        lines.append(
            f"| {name} | {_iv(sub['accuracy'])} | {_iv(paired[name]) if name in paired else '–'} | {pk} | "
            f"{m['tokens_per_answer']:.1f} | {_num(mult, '.2f', '×')} | "
            f"{_num(m.get('wall_s_per_problem'), '.2f')} | "
            f"{_num(mc['acceptance_rate'], '.2f')} | {_num(mc['change_rate'], '.2f')} |"
        )
    smc_methods = {name: m["smc"] for name, m in methods.items() if "smc" in m}
    if smc_methods:
        lines += [
            "",
            "| SMC | particles | sweeps/answer | resamples/answer | ESS min (mean) | unique ancestors |",
            "|---|---|---|---|---|---|",
        ]
        for name, x in smc_methods.items():
            lines.append(
                f"| {name} | {x['particles']} | {x['sweeps_per_answer']:.1f} | "
                f"{x['resamples_per_answer']:.1f} | {x['ess_min_mean']:.2f} | "
                f"{x['unique_ancestors_mean']:.1f} |"
            )
    tags = sorted({t for m in methods.values() for t in m["subsets"] if t != "all"})
    for tag in tags:
        lines += [
            "",
            f"Subset `{tag}`:",
            "",
            "| method | problems | accuracy [95% CI] | " + " | ".join(f"pass@{k}" for k in ks) + " |",
            "|---|---|---|" + "---|" * len(ks),
        ]
        for name, m in methods.items():
            if tag not in m["subsets"]:
                continue
            sub = m["subsets"][tag]
            pk = " | ".join(f"{sub['pass_at_k'][k]:.2f}" if k in sub["pass_at_k"] else "–" for k in ks)
            lines.append(f"| {name} | {sub['problems']} | {_iv(sub['accuracy'])} | {pk} |")
    diag = summary.get("diagnostics", {})
    target = diag.get("target_on_seen_answers")
    if target:
        a = target["alpha"]
        lines += [
            "",
            f"What an exact sampler of p or p^{a:g} would score, estimated from the answers any method "
            "produced (each target restricted to them; unseen answers are mostly wrong, so this overstates "
            f"p, much less p^{a:g}, which suppresses the unseen tail; `seen mass` is the share of p they "
            f"cover), and by self-normalised importance weights p^{a - 1:g} on the T = 1 draws:",
            "",
            f"| subset | problems | p | p^{a:g} | p^{a:g} by importance weights | seen mass |",
            "|---|---|---|---|---|---|",
        ]
        for subset, row in target["subsets"].items():
            cells = [subset, str(row["problems"]), f"{row['p']:.3f}", f"{row['p^alpha']:.3f}"]
            cells += [_num(row.get("p^alpha_is"), ".3f"), f"{row['seen_mass']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    pvl = diag.get("power_vs_low_temp")
    if pvl:
        gain = pvl["mean_logp_gain_when_changed"]
        lines += [
            "",
            f"Power chains against low-temp's draw from the same seed: {pvl['unchanged']} of {pvl['chains']} "
            f"ended on the same answer; {pvl['changed']} changed ({pvl['wrong_to_right']} wrong→right, "
            f"{pvl['right_to_wrong']} right→wrong, {pvl['same_correctness']} no change in correctness), "
            f"log p {'–' if gain is None else f'{gain:+.2f}'} on average when changed "
            f"({pvl['logp_increased']} of {pvl['changed']} increased).",
        ]
    if summary.get("missing"):
        lines += ["", "Problems not yet run: " + ", ".join(f"{k} {v}" for k, v in summary["missing"].items())]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """accuracy_vs_tokens.png and pass_at_k.png (one panel per subset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods: dict[str, Any] = summary["methods"]
    if not methods:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, m in methods.items():
        acc = m["subsets"]["all"]["accuracy"]
        x = m["tokens_per_answer"]
        ax.errorbar(
            [x],
            [acc["value"]],
            yerr=[[acc["value"] - acc["low"]], [acc["high"] - acc["value"]]],
            fmt="o",
            capsize=4,
            label=name,
        )
        ax.annotate(name, (x, acc["value"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("proposal tokens per answer")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(f"{summary['dataset']['name']}: accuracy vs tokens spent")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "accuracy_vs_tokens.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    subsets = ["all", *sorted({t for m in methods.values() for t in m["subsets"] if t != "all"})]
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.5 * len(subsets), 4), squeeze=False)
    for ax, subset in zip(axes[0], subsets, strict=True):
        for name, m in methods.items():
            pk = m["subsets"].get(subset, {}).get("pass_at_k", {})
            if pk:
                ks = sorted(int(k) for k in pk)
                ax.plot(ks, [pk[str(k)] for k in ks], marker="o", label=name)
        ax.set_title(f"pass@k ({subset})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pass@k")
    axes[0][0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    paths.append(out_dir / "pass_at_k.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def write_report(out_dir: Path, run_info: dict[str, Any], *, plots: bool = True) -> dict[str, Any]:
    """Write run.json, summary.json, summary.md (and the plots); return the summary."""
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=list) + "\n")
    summary = summarize(out_dir, run_info)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    (out_dir / "summary.md").write_text(markdown(summary))
    if plots:
        plot(summary, out_dir)
    return summary


def rebuild_report(out_dir: Path, *, plots: bool = True) -> dict[str, Any]:
    """Recompute the summary of a folder from its run.json and result files."""
    path = out_dir / "run.json"
    if not path.exists():
        from powersampling.errors import InvalidArgument

        raise InvalidArgument("out", f"{out_dir} holds no run.json (not a benchmark folder)")
    return write_report(out_dir, json.loads(path.read_text()), plots=plots)


__all__ = ["markdown", "plot", "rebuild_report", "summarize", "summarize_method", "write_report"]
