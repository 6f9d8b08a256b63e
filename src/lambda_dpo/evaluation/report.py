"""The evaluation report: ``eval.json`` (every number), ``eval.md`` (tables) and PNG plots, from one results dict.

The results dict is what :func:`lambda_dpo.evaluation.run.run_evaluation` returns; the report is a pure function of
it, so ``eval.md`` and the plots can be rebuilt from a saved ``eval.json`` (:func:`write_report`). Models appear
side by side (the trained model, then ``--baseline``) in every table and plot.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lambda_dpo.atomic import atomic_write
from lambda_dpo.evaluation.controllability import ControllabilityResult, json_safe
from lambda_dpo.evaluation.model_eval import MIXED


def lambda_label(lambdas: Mapping[str, float] | None) -> str:
    """``"a=1.00 b=0.00"``, or ``"—"`` for no λ (an unconditioned model)."""
    if not lambdas:
        return "—"
    return " ".join(f"{d}={w:.2f}" for d, w in lambdas.items())


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value, digits: int = 3) -> str:
    if _missing(value):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pm(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"mean ± stderr"``, or just the mean when there is no standard error."""
    if not stat:
        return "—"
    mean, stderr = stat.get("mean"), stat.get("stderr")
    return _num(mean, digits) if _missing(stderr) else f"{_num(mean, digits)} ± {_num(stderr, digits)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


# ------------------------------------------------------------------------------------------------ markdown
def _ranking_section(results) -> list[str]:
    entries, models = results.get("ranking") or [], results["models"]
    if not entries:
        return []
    lines = ["## Ranking of the implicit reward on held-out lists", "",
             "Implicit reward r = β (ℓ_θ(y | x, λ) − ℓ_ref(y | x)). Accuracy: fraction of the pairs the target orders "
             "that r orders the same way (ties ½; chance = 0.5). Kendall τ-b and NDCG against the target "
             f"probabilities. `{MIXED}` is the λ-mixed target Σ_d λ_d p*[d], the one the model was asked to follow.", ""]
    header = ["λ", *(f"{m}: accuracy ({MIXED})" for m in models)]
    rows = [[lambda_label(e["lambda"]), *(_num(e["models"][m]["per_dimension"][MIXED]["ranking_accuracy"])
                                          for m in models)] for e in entries]
    lines += _table(header, rows) + [""]
    for entry in entries:
        lines += [f"### λ = {lambda_label(entry['lambda'])}", ""]
        header = ["target", *(f"{m}: {k}" for m in models for k in ("accuracy", "Kendall τ", "NDCG")), "lists"]
        rows = []
        for name in entry["models"][models[0]]["per_dimension"]:
            cells = [name]
            for m in models:
                report = entry["models"][m]["per_dimension"][name]
                cells += [_num(report["ranking_accuracy"]), _num(report["kendall_tau"]), _num(report["ndcg"])]
            rows.append([*cells, str(entry["models"][models[0]]["per_dimension"][name]["num_lists"])])
        lines += _table(header, rows) + [""]
    return lines


def _reliance_section(results) -> list[str]:
    reliance = results.get("lambda_reliance") or {}
    if not reliance:
        return []
    rows = [[label, _num(r.get("reliance"), 4), _num(r.get("relative"), 3),
             ", ".join(f"{d} {_num(g, 3)}" for d, g in (r.get("relative_per_dimension") or {}).items()) or "—",
             _num(r.get("logp_shift"), 3)] for label, r in reliance.items()]
    return ["## λ-reliance", "",
            "How much the implicit rewards depend on λ: the held-out listwise loss of each dimension when the model "
            "is told another dimension's one-hot λ, minus the loss under its own (≈ 0: λ is ignored), and the mean "
            "|Δ log π(y | x, λ)| between one-hot λ (nats per response). Relative: the same gap over the one a "
            "policy equal to the targets would have (0 = λ ignored, 1 = as λ-dependent as the targets); below 0.1 "
            "a dimension cannot be steered.", "",
            *_table(["model", "λ-reliance (nats)", "relative", "relative per dimension", "mean |Δ log π| (nats)"],
                    rows), ""]


def _kl_section(results) -> list[str]:
    entries, models = results.get("ranking") or [], results["models"]
    kl = {lambda_label(e["lambda"]): e["models"] for e in results.get("kl") or []}
    if not entries and not kl:
        return []
    lines = ["## KL(π_θ ‖ π_ref)", "",
             "Sampled: Monte Carlo over responses sampled from the λ-conditioned model (temperature 1, no top-k/top-p), "
             "nats per response, mean ± standard error. Held-out: mean log-ratio log π_θ − log π_ref on the data's "
             "responses (not samples of π_θ, so not an unbiased KL).", ""]
    header = ["λ", *(f"{m}: {k}" for m in models for k in ("KL sampled", "log-ratio held-out"))]
    rows = []
    for entry in entries:
        label = lambda_label(entry["lambda"])
        cells = [label]
        for m in models:
            cells += [_pm((kl.get(label) or {}).get(m)), _pm(entry["models"][m].get("heldout_log_ratio"))]
        rows.append(cells)
    return [*lines, *_table(header, rows), ""]


def _length_section(results) -> list[str]:
    entries = results.get("ranking") or []
    if not entries:
        return []
    lines = ["## Length bias", "",
             "Spearman ρ between the response length in tokens and: the per-token log-prob, the sequence log-prob "
             "(negative by construction), the implicit reward (> 0: longer responses ranked higher).", ""]
    header = ["model", "λ", "ρ(per-token log-prob)", "ρ(sequence log-prob)", "ρ(implicit reward)"]
    rows = []
    for m in results["models"]:
        for entry in entries:
            bias = entry["models"][m]["length_bias"]
            rows.append([m, lambda_label(entry["lambda"]), _num(bias["logp_mean"]), _num(bias["logp_sum"]),
                         _num(bias.get("reward"))])
    reference = results.get("reference_length_bias")
    if reference:
        rows.append(["reference", "—", _num(reference["logp_mean"]), _num(reference["logp_sum"]), "—"])
    return [*lines, *_table(header, rows), ""]


def _controllability_section(results) -> list[str]:
    section = results.get("controllability")
    if not section:
        return []
    dims = results["dimensions"]
    ref = ", ".join(_num(v) for v in section["shared_reference_point"])
    lines = ["## Controllability", "",
             f"λ on a simplex grid (step 1/{section['grid_n']}, {len(section['grid'])} points), "
             f"{section['num_prompts']} prompts × {section['num_samples']} samples each, scored by "
             f"{section['judge']}. Hypervolume of the grid's mean score vectors (maximisation) measured from the shared "
             f"reference point ({ref}) = per dimension, the lowest mean score of all models minus 10 % of the range.", ""]
    header = ["model", *(f"ρ(λ_{d}, {d})" for d in dims), "hypervolume", "Pareto points"]
    rows = []
    for m, data in section["models"].items():
        rows.append([m, *(_num(data["spearman_rows"][d]) for d in dims), _num(section["shared_hypervolume"][m], 4),
                     str(len(data["pareto_indices"]))])
    lines += _table(header, rows) + [""]
    for m, data in section["models"].items():
        lines += [f"### {m}", "", ControllabilityResult.from_dict(data).to_markdown(), ""]
    return lines


def _win_rate_section(results) -> list[str]:
    section = results.get("win_rate")
    if not section:
        return []
    dims = results["dimensions"]
    lines = ["## Win rate", "",
             f"Judged by {section['judge']} on the λ-weighted score Σ_d λ_d s_d and on each dimension alone, over "
             "paired responses (same prompt, same sample index; a tie counts ½); mean ± standard error.", ""]
    header = ["λ", "pair", "λ-weighted", *dims]
    rows = []
    for entry in section["comparisons"]:
        for pair, report in entry["pairs"].items():
            rows.append([lambda_label(entry["lambda"]), pair, _pm(report["lambda_weighted"]),
                         *(_pm(report["per_dimension"][d]) for d in dims)])
    return [*lines, *_table(header, rows), ""]


def _lm_eval_section(results) -> list[str]:
    section = results.get("lm_eval")
    if not section:
        return []
    settings, models = section["settings"], list(section["models"])
    lines = ["## Benchmarks (lm-evaluation-harness)", "",
             f"lm-eval {settings.get('lm_eval_version')}, chat template: {settings.get('apply_chat_template')}, "
             f"limit: {settings.get('limit')}, few-shot: {settings.get('num_fewshot')}. System instruction: "
             + "; ".join(f"{m}: {section['models'][m].get('system_instruction')!r}" for m in models) + ".", ""]
    rows = []
    first = section["models"][models[0]]
    for kind in ("groups", "tasks"):
        for task, metrics in first[kind].items():
            for metric in metrics:
                if metric.endswith("_stderr") or "_stderr/" in metric:
                    continue
                cells = [task, metric]
                for m in models:
                    table = section["models"][m][kind].get(task, {})
                    stderr = table.get(metric.replace("/", "_stderr/", 1) if "/" in metric else f"{metric}_stderr")
                    cells.append(_pm({"mean": table.get(metric), "stderr": stderr}))
                rows.append(cells)
    return [*lines, *_table(["task", "metric", *models], rows), ""]


def _performance_section(results) -> list[str]:
    perf = results.get("performance")
    if not perf:
        return []
    lines = ["## Cost of this evaluation", "",
             f"Device: {perf['device']}; total wall time {perf['total_wall_s']:.1f} s; peak memory "
             f"{perf['peak_memory_bytes'] / 2**20:.0f} MiB ({perf['peak_memory_kind']}). Tokens are response tokens "
             "(scored or generated).", ""]
    header = ["phase", "wall s", "responses", "responses/s", "tokens", "tokens/s"]
    rows = [[name, f"{p['wall_s']:.2f}", str(p["responses"]), f"{p['responses_per_s']:.1f}", str(p["tokens"]),
             f"{p['tokens_per_s']:.1f}"] for name, p in perf["phases"].items()]
    return [*lines, *_table(header, rows), ""]


def render_markdown(results: Mapping[str, Any]) -> str:
    """``eval.md``: a header with what was evaluated, then one section per evaluation, then the notes."""
    reference = results.get("reference") or {}
    lines = ["# lambda-dpo evaluation", "",
             f"- model: `{results['model']}`",
             *([f"- baseline: `{results['baseline']}`"] if results.get("baseline") else []),
             f"- reference: `{reference.get('path')}`" + (" (adapters disabled)" if reference.get("adapter_disabled") else ""),
             f"- held-out data: `{results['data']}` ({results['num_records']} lists)",
             f"- dimensions: {', '.join(results['dimensions'])}", ""]
    for section in (_ranking_section, _reliance_section, _kl_section, _length_section, _controllability_section, _win_rate_section,
                    _lm_eval_section, _performance_section):
        lines += section(results)
    if results.get("plots"):
        lines += ["## Plots", "", *(f"![{name}]({file})" for name, file in results["plots"].items()), ""]
    if results.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in results["notes"]), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots
def make_plots(results: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write every plot the results allow into ``out_dir``; returns ``{name: file name}``."""
    from lambda_dpo.evaluation import plots

    out_dir, made, models = Path(out_dir), {}, results["models"]
    entries = results.get("ranking") or []
    if entries:
        values = {m: {lambda_label(e["lambda"]): (e["models"][m]["per_dimension"][MIXED]["ranking_accuracy"], None)
                      for e in entries} for m in models}
        plots.plot_grouped_bars(values, out_dir / "ranking_accuracy.png", f"ranking accuracy ({MIXED} target)",
                                "Implicit-reward ranking accuracy on held-out lists", baseline=0.5)
        made["ranking accuracy"] = "ranking_accuracy.png"
        points = {m: entries[0]["models"][m]["length_bias"]["points"] for m in models}
        if results.get("reference_length_bias"):
            points["reference"] = results["reference_length_bias"]["points"]
        plots.plot_length_bias({m: (p["lengths"], p["logp_mean"]) for m, p in points.items()},
                               out_dir / "length_bias.png")
        made["length bias"] = "length_bias.png"
    if results.get("kl"):
        values = {m: {lambda_label(e["lambda"]): (e["models"][m]["mean"], e["models"][m]["stderr"])
                      for e in results["kl"] if m in e["models"]} for m in models}
        plots.plot_grouped_bars({m: v for m, v in values.items() if v}, out_dir / "kl.png",
                                "KL(π_θ ‖ π_ref), nats per response", "KL on sampled responses (± standard error)")
        made["KL"] = "kl.png"
    section = results.get("controllability")
    if section:
        loaded = {m: ControllabilityResult.from_dict(d) for m, d in section["models"].items()}
        plots.plot_score_vs_lambda(loaded, out_dir / "controllability_score_vs_lambda.png")
        made["controllability: score against λ"] = "controllability_score_vs_lambda.png"
        if len(results["dimensions"]) >= 2:
            plots.plot_pareto_grid(loaded, out_dir / "controllability_pareto.png")
            made["controllability: Pareto fronts"] = "controllability_pareto.png"
    if results.get("win_rate"):
        values: dict[str, dict] = {}
        for entry in results["win_rate"]["comparisons"]:
            for pair, report in entry["pairs"].items():
                stat = report["lambda_weighted"]
                values.setdefault(pair, {})[lambda_label(entry["lambda"])] = (stat["mean"], stat["stderr"])
        plots.plot_grouped_bars(values, out_dir / "win_rate.png", "win rate (λ-weighted score)",
                                f"Win rate judged by {results['win_rate']['judge']}", baseline=0.5)
        made["win rate"] = "win_rate.png"
    return made


# ------------------------------------------------------------------------------------------------ files
def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_report(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the plots, ``eval.json`` (NaN → null) and ``eval.md`` into ``out_dir``; returns their paths.

    ``results["plots"]`` is set to the plots written, so both files list them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results["plots"] = make_plots(results, out_dir)
    paths = {"json": out_dir / "eval.json", "markdown": out_dir / "eval.md"}
    _write_atomic(paths["json"], json.dumps(json_safe(results), indent=2, ensure_ascii=False) + "\n")
    _write_atomic(paths["markdown"], render_markdown(results))
    return {**paths, **{name: out_dir / file for name, file in results["plots"].items()}}


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a saved ``eval.json`` (to re-render it with :func:`write_report`)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


__all__ = ["lambda_label", "load_results", "make_plots", "render_markdown", "write_report"]
