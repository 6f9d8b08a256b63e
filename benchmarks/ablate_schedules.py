"""The paper's λ-schedule ablation, reproduced on the demo world (issue #7).

Every configuration starts from the same SFT reference and trains with the same data, step budget and settings as
the demo's λ-DPO model; only the λ schedule (or the loss) changes:

    uniform, gaussian, unimodal, fixed, learned   listwise λ-DPO with that schedule (λ shown to the policy)
    dpo (unimodal)                                 best-vs-worst pairwise DPO under the λ-mixed target

Each is run with several seeds (the seed changes the data order, the λ draws and the samples; the SFT reference is
shared) and evaluated like the demo: per-dimension Spearman(λ_d, mean score_d) over the λ grid on held-out prompts,
hypervolume of the grid's mean scores (one reference point shared by every run), and held-out ranking accuracy of
the implicit reward. The `learned` schedule gets its signal (per-dimension ranking accuracy) from the trainer's
evaluation every eighth of the run, on the same 16 held-out records whose ranking accuracy the table reports (the
world has no third split): it only chooses which λ are sampled, but its held-out accuracy is not fully independent.

    python benchmarks/ablate_schedules.py            # 3 seeds; about 25 minutes on 2 CPU cores
    python benchmarks/ablate_schedules.py --quick    # 1 seed, short runs; about 4 minutes

Prints a table (mean ± std over seeds), writes benchmarks/results/ablation[_quick].json and a plot next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "uniform": {"loss": "listwise", "lambda_schedule": "uniform"},
    "gaussian": {"loss": "listwise", "lambda_schedule": "gaussian"},
    "unimodal": {"loss": "listwise", "lambda_schedule": "unimodal"},
    "fixed": {"loss": "listwise", "lambda_schedule": "fixed"},
    "learned": {"loss": "listwise", "lambda_schedule": "learned", "lambda_schedule_kwargs": {"signal": "accuracy"}},
    "dpo (unimodal)": {"loss": "dpo", "lambda_schedule": "unimodal"},
}


def _settings(quick: bool):
    from lambda_dpo.demo.pipeline import DemoSettings

    # The ablation compares schedules under the λ line (conditioning: text), as its README table was measured.
    base = replace(DemoSettings(), conditioning="text")
    if quick:
        return replace(base, num_train=480, sft_steps=150, dpo_steps=60, eval_prompts=8, samples=1)
    return replace(base, num_train=2400, sft_steps=250, dpo_steps=300, eval_prompts=16, samples=2)


def _run_one(job: dict) -> dict:
    """Train one (configuration, seed) from the shared SFT model and evaluate it; runs in a worker process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lambda_dpo.data import load_listwise
    from lambda_dpo.demo import pipeline as demo
    from lambda_dpo.demo.world import DIMENSIONS
    from lambda_dpo.generation import load_metadata

    torch.set_num_threads(1)  # one process per core: tiny models scale worse over threads than over processes
    s = replace(demo.DemoSettings(), **job["settings"])
    load = {"format": "listwise", "dimensions": DIMENSIONS, "strict": True, "keep_in_memory": True}
    train = load_listwise(job["train"], **load).select(range(s.dpo_steps * s.batch_size))
    heldout = load_listwise(job["heldout"], **load)
    tokenizer = AutoTokenizer.from_pretrained(job["sft_dir"])
    options = dict(CONFIGS[job["config"]], condition_on_lambda=True)
    if options["lambda_schedule"] == "learned":  # the schedule's signal: held-out metrics every eighth of the run
        options.update(eval_strategy="steps", eval_steps=max(1, s.dpo_steps // 8))
    trainer, metrics, seconds = demo._train_method(job["config"], options, job["sft_dir"], job["out_dir"], train, heldout,
                                             tokenizer, s)
    model = AutoModelForCausalLM.from_pretrained(job["out_dir"]).eval()
    prompts = [r["prompt"][-1]["content"] for r in heldout.select(range(min(s.eval_prompts, len(heldout))))]
    result = demo._controllability(model, tokenizer, load_metadata(job["out_dir"]), prompts, s,
                                   f"{job['config']} seed {s.seed}")
    return {"config": job["config"], "seed": s.seed, "heldout_accuracy": metrics.get("eval_accuracy_mean"),
            "train_seconds": seconds, "schedule_stats": trainer.schedule.stats(),
            "result": {k: v for k, v in result.to_dict(include_scores=False).items() if k != "responses"}}


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict], dimensions: list[str]) -> dict:
    """Per configuration: mean ± std over seeds of worst-dimension and mean Spearman (over the grid's mean scores),
    hypervolume (shared reference point), held-out ranking accuracy and training wall time."""
    import numpy as np

    from lambda_dpo.evaluation.metrics import default_reference_point, hypervolume

    means = np.array([r["result"]["mean_scores"] for r in runs], dtype=float)  # [runs, grid, m]
    reference = default_reference_point(*means)
    table = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        rows = [(r, m) for r, m in zip(runs, means) if r["config"] == config]
        rho = [[r["result"]["spearman_means"][d] for d in dimensions] for r, _ in rows]
        rho = [[0.0 if v is None or not math.isfinite(v) else v for v in seed] for seed in rho]  # constant = 0
        columns = {
            "worst_spearman": [min(seed) for seed in rho],
            "mean_spearman": [statistics.fmean(seed) for seed in rho],
            "hypervolume": [hypervolume(m, reference) for _, m in rows],
            "heldout_accuracy": [r["heldout_accuracy"] for r, _ in rows],
            "train_seconds": [r["train_seconds"] for r, _ in rows],
        }
        table[config] = {name: dict(zip(("mean", "std"), _mean_std(v))) | {"values": v}
                         for name, v in columns.items()}
    return {"reference_point": reference.tolist(), "table": table}


def render(summary: dict) -> str:
    header = "| schedule | worst-dim Spearman | mean Spearman | hypervolume | held-out ranking acc. | train time (s) |"
    lines = [header, "|---|---|---|---|---|---|"]
    for config, row in summary["table"].items():
        cell = {k: f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in row.items()}
        lines.append(f"| {config} | {cell['worst_spearman']} | {cell['mean_spearman']} | {cell['hypervolume']} | "
                     f"{cell['heldout_accuracy']} | {row['train_seconds']['mean']:.0f} |")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(summary["table"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, title) in zip(axes, [("worst_spearman", "worst-dimension Spearman"),
                                       ("hypervolume", "hypervolume"), ("heldout_accuracy", "held-out ranking acc.")]):
        for x, config in enumerate(configs):
            cell = summary["table"][config][key]
            ax.bar(x, cell["mean"], yerr=cell["std"], color="C0" if config != "learned" else "C3", capsize=3)
            ax.scatter([x] * len(cell["values"]), cell["values"], color="k", s=8, zorder=3)
        ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, short runs (about 4 minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 3, quick 1)")
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--out", default=os.path.join("runs", "ablation"), help="run directory (models, data)")
    parser.add_argument("--results", default=os.path.join(HERE, "results"), help="where the JSON and PNG go")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args(argv)

    import torch

    from lambda_dpo.demo import pipeline as demo
    from lambda_dpo.demo.world import DIMENSIONS

    seeds = args.seeds or (1 if args.quick else 3)
    s = _settings(args.quick)
    started = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _, _, _, sft_dir, sft_seconds = demo.prepare(args.out, s)
    data = os.path.join(args.out, "data")
    jobs = [{"config": c, "settings": asdict(replace(s, seed=seed)), "sft_dir": sft_dir,
             "train": os.path.join(data, "train.jsonl"), "heldout": os.path.join(data, "heldout.jsonl"),
             "out_dir": os.path.join(args.out, "models", f"{c.split()[0]}-seed{seed}")}
            for seed in range(seeds) for c in args.configs]
    print(f"[3/5] {len(jobs)} runs ({len(args.configs)} configurations × {seeds} seeds), {s.dpo_steps} steps each, "
          f"{args.workers} worker processes", flush=True)
    # The reference pass is the same for every run: compute it once (cache hit for every job afterwards).
    runs = [_run_one(jobs[0])]
    if args.workers == 1:
        runs += [_run_one(job) for job in jobs[1:]]
    else:
        # spawn, not fork: a forked child of a process that already ran torch's OpenMP pool can hang.
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs += list(pool.map(_run_one, jobs[1:]))

    summary = summarise(runs, DIMENSIONS) | {
        "settings": asdict(s), "seeds": seeds, "quick": args.quick, "configs": {c: CONFIGS[c] for c in args.configs},
        "sft_seconds": sft_seconds, "total_seconds": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d"), "runs": runs,
    }
    os.makedirs(args.results, exist_ok=True)
    name = "ablation_quick" if args.quick else "ablation"
    with open(os.path.join(args.results, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    plot(summary, os.path.join(args.results, f"{name}.png"))
    print("\n" + render(summary) + f"\n\n{seeds} seed(s), {s.dpo_steps} steps each; whole run "
          f"{summary['total_seconds'] / 60:.1f} min; {os.path.join(args.results, name)}.json/.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
