"""`lambda-dpo eval`: evaluate a trained model (docs/spec.md §4) and write ``eval.json``, ``eval.md`` and PNG plots.

    lambda-dpo eval --model runs/x --data heldout.jsonl --scorer lambda_dpo.demo.world:scorer [--baseline runs/y]

Sections, each run when its inputs are there: ranking of the implicit reward on the held-out lists, KL to the
reference (sampled and on the held-out responses), length bias, controllability over a λ grid and win rates (with a
``--scorer``), lm-evaluation-harness benchmarks (``--lm-eval-tasks``), and the cost of the evaluation itself.
:func:`run_evaluation` is the same thing as a Python function.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from lambda_dpo.conditioning import as_lambda
from lambda_dpo.evaluation import model_eval as me
from lambda_dpo.reliance import RELATIVE_MIN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a model directory written by `lambda-dpo train`, or a plain Hugging Face model (an SFT or "
                             "TRL-trained model: it is evaluated unconditioned, with --reference)")
    parser.add_argument("--dimensions", default=None,
                        help="comma-separated dimensions to evaluate a plain model on (default: the held-out data's)")
    parser.add_argument("--data", required=True, help="held-out preference data (any format `lambda-dpo convert` reads)")
    parser.add_argument("--data-format", default="auto", help="format of --data (default: detected)")
    parser.add_argument("--max-records", type=int, default=None, help="evaluate only the first N held-out lists")
    parser.add_argument("--baseline", default=None, help="a second model to put side by side (λ-DPO or plain HF dir)")
    parser.add_argument("--reference", default=None,
                        help="the reference π_ref (default: training.reference_model or model_name_or_path from "
                             "lambda_dpo.json; the base model with adapters disabled for a LoRA adapter dir)")
    parser.add_argument("--out", default=None, help="output folder (default: <model>/eval)")
    parser.add_argument("--lambda", dest="lambdas", action="append", metavar="NAME=W,…",
                        help="λ to evaluate at, e.g. helpfulness=0.7,honesty=0.3 (repeat; default: one-hot per dimension)")
    parser.add_argument("--normalize", action="store_true", help="rescale each --lambda to sum to 1")
    parser.add_argument("--ndcg-k", type=int, default=None, help="NDCG cut-off (default: the whole list)")
    parser.add_argument("--scorer", action="append", default=[], metavar="SPEC",
                        help="judge for controllability and win rates: module:function, file.py:function, a reward "
                             "model DIR, or name=DIR (one single-output reward model per dimension; repeat). A "
                             "file.py or module is imported: its top-level code runs, so name only code you trust")
    parser.add_argument("--scorer-dimensions", default=None,
                        help="comma-separated names of a multi-output reward model's outputs (default: id2label)")
    parser.add_argument("--grid", type=int, default=3, help="controllability λ grid step 1/N (0 = skip)")
    parser.add_argument("--num-prompts", type=int, default=8, help="held-out prompts used for generation")
    parser.add_argument("--num-samples", type=int, default=2,
                        help="responses per prompt and λ for controllability and win rates")
    parser.add_argument("--kl-samples", type=int, default=4, help="sampled responses per prompt for the KL (0 = skip)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (not for the KL)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (not for the KL)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding for controllability and win rates")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward / generate call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    lm = parser.add_argument_group("lm-evaluation-harness (optional extra: pip install 'lambda-dpo[lm-eval]')")
    lm.add_argument("--lm-eval-tasks", default=None,
                    help="comma-separated tasks, e.g. mmlu,arc_challenge,hellaswag,truthfulqa_mc2,winogrande,gsm8k")
    lm.add_argument("--lm-eval-include-path", action="append", default=[], metavar="DIR",
                    help="folder of local task YAMLs (dataset_path: json + dataset_kwargs.data_files); repeatable. "
                         "Task YAMLs may import Python (!function): use only folders you trust")
    lm.add_argument("--lm-eval-lambda", default=None, help="λ of the system instruction (default: uniform)")
    lm.add_argument("--lm-eval-limit", type=float, default=None, help="examples per task (count, or fraction < 1)")
    lm.add_argument("--lm-eval-num-fewshot", type=int, default=None)
    lm.add_argument("--lm-eval-batch-size", type=int, default=8)
    lm.add_argument("--lm-eval-chat-template", action=argparse.BooleanOptionalAction, default=True,
                    help="render benchmark prompts with the chat template (the λ line as system message)")


def _lambdas(texts: Sequence[str] | None, dimensions: list[str], normalize: bool) -> list[dict[str, float]]:
    if not texts:
        return [{d: float(d == name) for d in dimensions} for name in dimensions]
    return [as_lambda(text, dimensions, normalize=normalize) for text in texts]


class _Run:
    """One evaluation: the loaded models, data and settings, and the results dict the sections fill in."""

    def __init__(self, args: argparse.Namespace):
        from lambda_dpo.data import dataset_dimensions, load_listwise
        from lambda_dpo.evaluation.scorers import load_scorer

        self.args = args
        self.monitor = me.PerformanceMonitor(args.device or me.default_device())
        self.progress = not args.no_progress
        self.notes: list[str] = []
        with self.monitor.phase("load"):
            data = load_listwise(args.data, format=args.data_format)
            plain_dimensions = ([d.strip() for d in args.dimensions.split(",") if d.strip()] if args.dimensions
                                else dataset_dimensions(data))
            self.policy = me.load_eval_model(args.model, "model", plain_dimensions, device=args.device)
            self.dimensions = self.policy.dimensions
            self.reference = me.load_reference(self.policy, args.reference, device=args.device)
            self.models = [self.policy]
            if args.baseline:
                baseline = me.load_eval_model(args.baseline, "baseline", self.dimensions, device=args.device)
                if baseline.dimensions != self.dimensions:
                    raise ValueError(
                        f"the baseline {args.baseline} was trained on dimensions {baseline.dimensions}, the model on "
                        f"{self.dimensions}; side by side they must share the same dimensions in the same order"
                    )
                self.models.append(baseline)
            if args.max_records is not None:
                data = data.select(range(min(args.max_records, len(data))))
            self.data = data
            self.scorer = None
            if args.scorer:
                names = args.scorer_dimensions.split(",") if args.scorer_dimensions else None
                self.scorer = load_scorer(args.scorer, names, device=args.device, batch_size=args.batch_size)
        self.training = self.policy.training
        self.lambdas = _lambdas(args.lambdas, self.dimensions, args.normalize)
        self.prompts, skipped = me.generation_prompts(data, args.num_prompts)
        if skipped:
            self.notes.append(f"{skipped} multi-turn held-out prompts are not used for generation (single-turn only)")
        self.generation = me.GenerationSettings(args.num_samples, args.max_new_tokens, not args.greedy,
                                                args.temperature, args.top_p, args.seed)
        self.results: dict[str, Any] = {
            "format_version": 1, "model": args.model, "baseline": args.baseline,
            "reference": {"path": self.reference.path, "adapter_disabled": self.reference.adapter_disabled},
            "data": args.data, "num_records": len(data), "dimensions": self.dimensions,
            "models": [m.label for m in self.models], "lambdas": self.lambdas,
            "settings": dict(vars(args)), "notes": self.notes,
        }

    def setting(self, model: me.EvalModel, key: str, default):
        """A training setting of ``model`` (a plain model borrows the evaluated model's)."""
        return model.training.get(key, self.training.get(key, default))

    # -------------------------------------------------------------------- held-out ranking, log-ratio, length bias
    def ranking(self) -> None:
        max_length = int(self.training.get("max_length") or 1024)
        max_prompt_length = self.training.get("max_prompt_length")
        heldouts: list[tuple[Any, me.Heldout, np.ndarray]] = []  # (tokenizer, held-out, reference log-probs)

        def heldout_for(tokenizer):
            for known, heldout, reference_logps in heldouts:
                if me.same_vocabulary(known, tokenizer):
                    return heldout, reference_logps
            heldout = me.prepare_heldout(self.data, tokenizer, self.dimensions, max_length=max_length,
                                         max_prompt_length=max_prompt_length, tau=float(self.training.get("tau", 1.0)))
            if not heldout.dimension_mask.any():
                raise ValueError(
                    f"no held-out list in {self.args.data} scores two responses on any of the model's dimensions "
                    f"{self.dimensions}; check that the data uses the same dimension names"
                )
            reference = self.reference
            if not me.same_vocabulary(tokenizer, reference.tokenizer):  # a baseline with its own tokenizer
                reference = dataclasses.replace(reference, tokenizer=tokenizer)
            with self.monitor.phase("held-out log-probs") as stats:
                reference_logps = me.heldout_logps(reference, heldout, None, batch_size=self.args.batch_size,
                                                   progress=self.progress)
                stats.add(heldout.response_mask.sum(), heldout.num_tokens.sum())
            heldouts.append((tokenizer, heldout, reference_logps))
            return heldout, reference_logps

        def rewards_at(model, lambdas):
            heldout, reference_logps = heldout_for(model.tokenizer)
            with self.monitor.phase("held-out log-probs") as stats:
                logps = me.heldout_logps(model, heldout, lambdas, max_prompt_length=max_prompt_length,
                                         batch_size=self.args.batch_size, progress=self.progress)
                stats.add(heldout.response_mask.sum(), heldout.num_tokens.sum())
            reference_free = self.setting(model, "reference", "model") == "none"
            rewards = me.implicit_rewards(logps, None if reference_free else reference_logps, heldout.num_tokens,
                                          float(self.setting(model, "beta", 0.1)),
                                          self.setting(model, "logprob_reduction", "mean"))
            return heldout, reference_logps, logps, rewards

        entries, at_vertices = [], {}
        for lambdas in self.lambdas:
            entry = {"lambda": lambdas, "models": {}}
            for model in self.models:
                heldout, reference_logps, logps, rewards = rewards_at(model, lambdas)
                if sorted(lambdas.values()) == [0.0] * (len(lambdas) - 1) + [1.0]:  # a vertex e_d: for λ-reliance
                    at_vertices[(model.label, max(lambdas, key=lambdas.get))] = (rewards, logps)
                mask = heldout.response_mask
                entry["models"][model.label] = {
                    "per_dimension": me.ranking_at_lambda(rewards, heldout, lambdas, self.args.ndcg_k),
                    "heldout_log_ratio": me.heldout_log_ratio(logps, reference_logps, mask),
                    "length_bias": {**me.length_bias_report(logps, heldout.num_tokens, mask, rewards),
                                    "points": _points(logps, heldout.num_tokens, mask)},
                }
            entries.append(entry)
        for model in self.models:
            if self.setting(model, "reference", "model") == "none":
                self.notes.append(f"{model.label} was trained reference-free: its implicit reward is β ℓ_θ")
        reliance = {}
        for model in self.models:
            vertices = []
            for d in self.dimensions:
                if (model.label, d) not in at_vertices:  # custom --lambda: score the vertices too
                    _, _, logps, rewards = rewards_at(model, {e: float(e == d) for e in self.dimensions})
                    at_vertices[(model.label, d)] = (rewards, logps)
                vertices.append(at_vertices[(model.label, d)])
            report = me.lambda_reliance_report([v[0] for v in vertices], [v[1] for v in vertices],
                                               heldout_for(model.tokenizer)[0])
            reliance[model.label] = report
            steerable = model.metadata.get("condition_on_lambda", True) and "fixed_lambda" not in model.metadata
            weak = {d: share for d, share in report["relative_per_dimension"].items()
                    if share < RELATIVE_MIN}
            if steerable and weak:
                self.notes.append(
                    f"{model.label} ignores λ for {', '.join(weak)} (relative λ-reliance "
                    f"{', '.join(f'{d} {g:.3f}' for d, g in weak.items())}: told λ = that dimension, it serves it "
                    "hardly better than told another), so it cannot be steered there; retrain with conditioning: lora")
        _, heldout, reference_logps = heldouts[0]
        self.results["lambda_reliance"] = reliance
        self.results["ranking"] = entries
        self.results["reference_length_bias"] = {
            **me.length_bias_report(reference_logps, heldout.num_tokens, heldout.response_mask),
            "points": _points(reference_logps, heldout.num_tokens, heldout.response_mask),
        }

    # -------------------------------------------------------------------- KL on sampled responses
    def kl(self) -> None:
        if self.args.kl_samples <= 0 or not self.prompts:
            self.notes.append("KL on sampled responses skipped (--kl-samples 0 or no single-turn prompt)")
            return
        models = [m for m in self.models if me.same_vocabulary(m.tokenizer, self.reference.tokenizer)]
        for m in self.models:
            if m not in models:
                self.notes.append(f"no sampled KL for {m.label}: its tokenizer's vocabulary differs from the reference's")
        entries = []
        for i, lambdas in enumerate(self.lambdas):
            entry = {"lambda": lambdas, "models": {}}
            for model in models:
                with self.monitor.phase("KL sampling") as stats:
                    kl = me.sampled_kl(model, self.reference, self.prompts, lambdas, num_samples=self.args.kl_samples,
                                       max_new_tokens=self.args.max_new_tokens,
                                       max_prompt_length=self.training.get("max_prompt_length"),
                                       batch_size=self.args.batch_size, seed=self.args.seed + 1000 * i)
                    stats.add(kl["num_samples"], kl.pop("tokens"))
                entry["models"][model.label] = kl
            entries.append(entry)
        self.results["kl"] = entries

    # -------------------------------------------------------------------- controllability
    def controllability(self) -> None:
        from lambda_dpo.evaluation.controllability import (
            evaluate_controllability,
            lambda_grid,
            shared_hypervolumes,
        )

        if self.scorer is None or self.args.grid <= 0 or not self.prompts:
            self.notes.append("controllability skipped (it needs --scorer, --grid ≥ 1 and single-turn prompts)")
            return
        grid = lambda_grid(self.dimensions, self.args.grid)
        outcomes = {}
        for model in self.models:
            with self.monitor.phase("controllability") as stats:
                outcomes[model.label] = evaluate_controllability(
                    self._sample_fn(model), self.scorer, [p.text for p in self.prompts], self.dimensions, grid,
                    num_samples=self.generation.num_samples, keep_responses=True, progress=self.progress,
                )
                texts = [r for point in outcomes[model.label].responses for samples in point for r in samples]
                stats.add(len(texts), _count_tokens(model.tokenizer, texts))
        reference_point, volumes = shared_hypervolumes(outcomes)
        self.results["controllability"] = {
            "grid_n": self.args.grid, "grid": grid, "num_prompts": len(self.prompts),
            "num_samples": self.generation.num_samples, "judge": self.scorer.description,
            "shared_reference_point": reference_point.tolist(), "shared_hypervolume": volumes,
            "models": {label: r.to_dict(include_scores=True) for label, r in outcomes.items()},
        }

    def _sample_fn(self, model: me.EvalModel):
        def sample_fn(prompts: list[str], lambdas: dict[str, float], num_samples: int) -> list[list[str]]:
            # evaluate_controllability passes back the prompt texts it was given, in order.
            assert [p.text for p in self.prompts] == list(prompts)
            # The same seed at every λ (common random numbers): scores then differ between grid points only
            # because λ changed the model's distribution, not by sampling noise, so a model that ignores λ gives
            # identical samples everywhere (Spearman undefined, never a spurious ±0.8 on 10 noisy grid means).
            return me.generate_responses(model, self.prompts, lambdas, self.generation, seed_offset=0)

        return sample_fn

    # -------------------------------------------------------------------- win rate
    def win_rate(self) -> None:
        if self.scorer is None or not self.prompts:
            self.notes.append("win rates skipped (they need --scorer and single-turn prompts)")
            return
        scored: dict[str, np.ndarray] = {}

        def generate_and_score(model, lambdas, key):
            with self.monitor.phase("win rate") as stats:
                responses = me.generate_responses(model, self.prompts, lambdas, self.generation, seed_offset=0)
                flat = [r for samples in responses for r in samples]
                stats.add(len(flat), _count_tokens(model.tokenizer, flat))
                scored[key] = me.score_responses(self.scorer, self.prompts, responses, self.dimensions)

        # The reference sees no λ: its responses are the same for every λ, only their weighting changes.
        generate_and_score(self.reference, self.lambdas[0], "reference")
        comparisons = []
        for i, lambdas in enumerate(self.lambdas):
            for model in self.models:
                generate_and_score(model, lambdas, f"{model.label}@{i}")
            pairs = {f"{m.label} vs reference": me.win_rate_report(scored[f"{m.label}@{i}"], scored["reference"],
                                                                   lambdas, self.dimensions) for m in self.models}
            if len(self.models) > 1:
                pairs["model vs baseline"] = me.win_rate_report(scored[f"model@{i}"], scored[f"baseline@{i}"],
                                                                lambdas, self.dimensions)
            comparisons.append({"lambda": lambdas, "pairs": pairs})
        self.results["win_rate"] = {"judge": self.scorer.description, "comparisons": comparisons}

    # -------------------------------------------------------------------- lm-evaluation-harness
    def lm_eval(self) -> None:
        from lambda_dpo.evaluation.lm_eval_bridge import lambda_system_instruction, run_lm_eval

        tasks = [t.strip() for t in (self.args.lm_eval_tasks or "").split(",") if t.strip()]
        if not tasks:
            return
        if self.args.lm_eval_lambda:
            lambdas = as_lambda(self.args.lm_eval_lambda, self.dimensions, normalize=self.args.normalize)
        else:
            lambdas = {d: 1.0 / len(self.dimensions) for d in self.dimensions}
        limit = self.args.lm_eval_limit
        limit = int(limit) if limit is not None and limit >= 1 else limit
        section = {"lambda": lambdas, "models": {}}
        for model in self.models:
            with self.monitor.phase("lm-eval"), model.steered(lambdas):  # λ-adapters run under the same λ
                out = run_lm_eval(
                    model.model, model.tokenizer, tasks, include_path=self.args.lm_eval_include_path,
                    system_instruction=lambda_system_instruction(model.metadata, lambdas),
                    apply_chat_template=self.args.lm_eval_chat_template, num_fewshot=self.args.lm_eval_num_fewshot,
                    limit=limit, batch_size=self.args.lm_eval_batch_size, seed=self.args.seed,
                )
            section["settings"] = out.pop("settings")
            out["system_instruction"] = section["settings"].pop("system_instruction")  # differs between models
            section["models"][model.label] = out
        self.results["lm_eval"] = section


def _points(logps: np.ndarray, num_tokens: np.ndarray, mask: np.ndarray) -> dict[str, list[float]]:
    """Per-response (length, per-token log-prob) for the length-bias plot."""
    lengths = num_tokens[mask].astype(float)
    return {"lengths": lengths.tolist(), "logp_mean": (logps[mask] / np.maximum(lengths, 1)).round(5).tolist()}


def _count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """Every section of the evaluation for parsed ``lambda-dpo eval`` arguments; returns the results dict that
    :func:`lambda_dpo.evaluation.report.write_report` writes."""
    run = _Run(args)
    run.ranking()
    run.kl()
    run.controllability()
    run.win_rate()
    run.lm_eval()
    run.results["performance"] = run.monitor.summary()
    return run.results


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.data import DataError
    from lambda_dpo.evaluation.lm_eval_bridge import LmEvalError
    from lambda_dpo.evaluation.report import write_report

    try:
        results = run_evaluation(args)
    except (ValueError, OSError, LmEvalError, DataError) as error:
        print(f"lambda-dpo eval: {error}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.model, "eval")
    paths = write_report(results, out)
    print(f"wrote {paths['json']}, {paths['markdown']} and {len(results['plots'])} plots in {out}")
    for entry in results.get("ranking", []):
        accuracy = {m: entry["models"][m]["per_dimension"][me.MIXED]["ranking_accuracy"] for m in results["models"]}
        print("λ " + " ".join(f"{d}={w:.2f}" for d, w in entry["lambda"].items()) + ": ranking accuracy "
              + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items()))
    return 0
