"""The demo's headline numbers over several seeds: how much of the table is the method and how much the draw.

Runs the whole `lambda-dpo demo` (world, tokenizer, SFT, three methods, controllability) once per seed, each into
its own run directory, and reports every method's per-dimension Spearman(λ_d, mean score_d) over the λ grid,
hypervolume and held-out ranking accuracy as mean ± std over the seeds. A seed changes everything random: the
world's data, the model's initialisation, the data order, the λ draws and the samples. Hypervolumes are measured
against each seed's own shared reference point, so they are compared within a seed: the table also counts the seeds
where λ-DPO's front is above each control's.

    python benchmarks/demo_seeds.py                # seeds 0 1 2, the full demo; about 20 minutes on 2 CPU cores
    python benchmarks/demo_seeds.py --quick        # the --quick demo; about 8 minutes

Prints the table, writes benchmarks/results/demo_seeds[_quick].json (the run directories go to runs/demo_seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = "λ-DPO"


def _mean_std(values: list[float | None], spec: str = "+.2f") -> str:
    """``"+0.83 ± 0.04"`` over the values that exist; ``—`` when a metric does not apply (the oracle's accuracy),
    ``n/a`` when it is undefined in every run (Spearman of a model that never moves)."""
    if any(v is None for v in values):
        return "—"
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{spec}} ± {std:{spec.lstrip('+')}}"


def table(runs: list[dict]) -> str:
    """Markdown table, one row per method: mean ± std over ``runs`` (demo summaries) of each metric."""
    dims = runs[0]["dimensions"]
    methods = list(runs[0]["methods"])
    lines = ["| method | " + " | ".join(f"Spearman {d}" for d in dims)
             + f" | gap to target | hypervolume | seeds with {MAIN}'s front above | held-out ranking acc. |",
             "|" + "---|" * (len(dims) + 5)]
    for label in methods:
        rows = [run["methods"][label] for run in runs]
        spearman = [_mean_std([row["spearman_means"][d] for row in rows]) for d in dims]
        above = "—" if label == MAIN else (
            f"{sum(run['methods'][MAIN]['hypervolume'] > run['methods'][label]['hypervolume'] for run in runs)}"
            f" / {len(runs)}")
        gap, volume, accuracy = (_mean_std([row[key] for row in rows], ".3f")
                                 for key in ("target_gap", "hypervolume", "heldout_accuracy"))
        lines.append(f"| {label} | " + " | ".join(spearman) + f" | {gap} | {volume} | {above} | {accuracy} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="run the --quick demo per seed")
    parser.add_argument("--out", default="runs/demo_seeds", help="parent of the per-seed run directories")
    parser.add_argument("--json", default=None, help="results file (default benchmarks/results/demo_seeds.json)")
    args = parser.parse_args(argv)

    from lambda_dpo.demo.pipeline import run_demo

    started = time.perf_counter()
    runs = []
    for seed in args.seeds:
        print(f"=== seed {seed} ===", flush=True)
        runs.append(run_demo(os.path.join(args.out, f"seed{seed}"), quick=args.quick, seed=seed))
    text = table(runs)
    minutes = [run["total_seconds"] / 60 for run in runs]
    print(f"\n{text}\n\n{len(runs)} seeds; one demo {min(minutes):.1f}–{max(minutes):.1f} min, all "
          f"{(time.perf_counter() - started) / 60:.1f} min")
    path = args.json or os.path.join(HERE, "results", f"demo_seeds{'_quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    keep = ("settings", "methods", "hypervolume_reference_point", "sft_seconds", "total_seconds")
    record = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "seeds": args.seeds, "table": text,
              "runs": [{key: run[key] for key in keep} for run in runs]}
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
