"""One evaluation of a trained model (docs/spec.md §4), as a library: :class:`EvalConfig` says what to evaluate
and how, :func:`run_evaluation` runs every section whose inputs are there and returns the results dict
(:mod:`lambda_dpo.evaluation.report` writes it as ``eval.json``, ``eval.md`` and plots; ``lambda-dpo eval`` is
this with command-line flags).

Sections: ranking of the implicit reward on the held-out lists, with λ-reliance; KL to the reference (sampled
and on the held-out responses); length bias; controllability over a λ grid and win rates (with a scorer);
lm-evaluation-harness benchmarks; and the cost of the evaluation itself. The training settings the numbers depend
on (β, τ and its scale, the reduction, the lengths) are read from the model's ``lambda_dpo.json``; a plain model
borrows the evaluated model's, and what neither records takes :class:`~lambda_dpo.config.LambdaDPOConfig`'s
defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lambda_dpo.conditioning import as_lambda
from lambda_dpo.evaluation import model_eval as me
from lambda_dpo.evaluation import sampling
from lambda_dpo.evaluation.performance import PerformanceMonitor
from lambda_dpo.reliance import RELATIVE_MIN


@dataclass
class EvalConfig:
    """What to evaluate and how (the flags of ``lambda-dpo eval``, which documents each; ``--x-y`` is ``x_y``)."""

    model: str
    data: str
    dimensions: str | None = None
    data_format: str = "auto"
    max_records: int | None = None
    baseline: str | None = None
    reference: str | None = None
    out: str | None = None
    lambdas: list[str] | None = None
    normalize: bool = False
    ndcg_k: int | None = None
    scorer: list[str] = field(default_factory=list)
    scorer_dimensions: str | None = None
    grid: int = 3
    num_prompts: int = 8
    num_samples: int = 2
    kl_samples: int = 4
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.95
    greedy: bool = False
    batch_size: int = 8
    seed: int = 0
    device: str | None = None
    no_progress: bool = False
    lm_eval_tasks: str | None = None
    lm_eval_include_path: list[str] = field(default_factory=list)
    lm_eval_lambda: str | None = None
    lm_eval_limit: float | None = None
    lm_eval_num_fewshot: int | None = None
    lm_eval_batch_size: int = 8
    lm_eval_chat_template: bool = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default (what the command line starts from)."""
        return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}


def training_default(key: str):
    """The default of training setting ``key`` (for a model whose ``lambda_dpo.json`` does not record it)."""
    from lambda_dpo.config import LambdaDPOConfig

    return LambdaDPOConfig.__dataclass_fields__[key].default


def lambdas_to_evaluate(texts: Sequence[str] | None, dimensions: list[str], normalize: bool) -> list[dict[str, float]]:
    """The λ of ``--lambda`` texts, checked against ``dimensions``; none given: the one-hot λ of each dimension."""
    if not texts:
        return [{d: float(d == name) for d in dimensions} for name in dimensions]
    return [as_lambda(text, dimensions, normalize=normalize) for text in texts]


class Evaluation:
    """One evaluation: the loaded models, data and settings, and the results dict its sections fill in (each
    section a method: :meth:`ranking`, :meth:`kl`, :meth:`controllability`, :meth:`win_rate`, :meth:`lm_eval`)."""

    def __init__(self, config: EvalConfig):
        from lambda_dpo.data import dataset_dimensions, load_listwise
        from lambda_dpo.evaluation.scorers import load_scorer

        self.config = config
        self.monitor = PerformanceMonitor(config.device or me.default_device())
        self.progress = not config.no_progress
        self.notes: list[str] = []
        with self.monitor.phase("load"):
            data = load_listwise(config.data, format=config.data_format)
            plain_dimensions = ([d.strip() for d in config.dimensions.split(",") if d.strip()] if config.dimensions
                                else dataset_dimensions(data))
            self.policy = me.load_eval_model(config.model, "model", plain_dimensions, device=config.device)
            self.dimensions = self.policy.dimensions
            self.reference = me.load_reference(self.policy, config.reference, device=config.device)
            self.models = [self.policy]
            if config.baseline:
                baseline = me.load_eval_model(config.baseline, "baseline", self.dimensions, device=config.device)
                if baseline.dimensions != self.dimensions:
                    raise ValueError(
                        f"the baseline {config.baseline} was trained on dimensions {baseline.dimensions}, the model on "
                        f"{self.dimensions}; side by side they must share the same dimensions in the same order"
                    )
                self.models.append(baseline)
            if config.max_records is not None:
                data = data.select(range(min(config.max_records, len(data))))
            self.data = data
            self.scorer = None
            if config.scorer:
                names = config.scorer_dimensions.split(",") if config.scorer_dimensions else None
                self.scorer = load_scorer(config.scorer, names, device=config.device, batch_size=config.batch_size)
        self.training = self.policy.training
        self.lambdas = lambdas_to_evaluate(config.lambdas, self.dimensions, config.normalize)
        self.prompts, skipped = sampling.generation_prompts(data, config.num_prompts)
        if skipped:
            self.notes.append(f"{skipped} multi-turn held-out prompts are not used for generation (single-turn only)")
        self.generation = sampling.GenerationSettings(config.num_samples, config.max_new_tokens, not config.greedy,
                                                config.temperature, config.top_p, config.seed)
        self.results: dict[str, Any] = {
            "format_version": 1, "model": config.model, "baseline": config.baseline,
            "reference": {"path": self.reference.path, "adapter_disabled": self.reference.adapter_disabled},
            "data": config.data, "num_records": len(data), "dimensions": self.dimensions,
            "models": [m.label for m in self.models], "lambdas": self.lambdas,
            "settings": dataclasses.asdict(config), "notes": self.notes,
        }

    def setting(self, model: me.EvalModel, key: str):
        """A training setting of ``model``: its own, else the evaluated model's (a plain model), else the default."""
        return model.training.get(key, self.training.get(key, training_default(key)))

    def score_scale(self) -> list[float] | None:
        """Per-dimension unit of τ: the training data's score ranges under ``tau_scale: range`` (as recorded in
        ``lambda_dpo.json``; the held-out data's, with a note, for a model dir that does not record them)."""
        if self.setting(self.policy, "tau_scale") != "range":
            return None
        recorded = self.training.get("score_ranges") or {}
        if all(d in recorded for d in self.dimensions):
            return [float(recorded[d]) for d in self.dimensions]
        from lambda_dpo.targets import score_ranges

        self.notes.append("τ is relative to the held-out data's score ranges: the model dir does not record the "
                          "training data's (tau_scale: range)")
        return score_ranges(self.data, self.dimensions).tolist()

    # -------------------------------------------------------------------- held-out ranking, log-ratio, length bias
    def ranking(self) -> None:
        max_length = int(self.setting(self.policy, "max_length"))
        max_prompt_length = self.setting(self.policy, "max_prompt_length")
        heldouts: list[tuple[Any, me.Heldout, np.ndarray]] = []  # (tokenizer, held-out, reference log-probs)

        def heldout_for(tokenizer):
            for known, heldout, reference_logps in heldouts:
                if me.same_vocabulary(known, tokenizer):
                    return heldout, reference_logps
            heldout = me.prepare_heldout(self.data, tokenizer, self.dimensions, max_length=max_length,
                                         max_prompt_length=max_prompt_length,
                                         tau=float(self.setting(self.policy, "tau")), score_scale=self.score_scale())
            if not heldout.dimension_mask.any():
                raise ValueError(
                    f"no held-out list in {self.config.data} scores two responses on any of the model's dimensions "
                    f"{self.dimensions}; check that the data uses the same dimension names"
                )
            reference = self.reference
            if not me.same_vocabulary(tokenizer, reference.tokenizer):  # a baseline with its own tokenizer
                reference = dataclasses.replace(reference, tokenizer=tokenizer)
            with self.monitor.phase("held-out log-probs") as stats:
                reference_logps = me.heldout_logps(reference, heldout, None, batch_size=self.config.batch_size,
                                                   progress=self.progress)
                stats.add(heldout.response_mask.sum(), heldout.num_tokens.sum())
            heldouts.append((tokenizer, heldout, reference_logps))
            return heldout, reference_logps

        def rewards_at(model, lambdas):
            heldout, reference_logps = heldout_for(model.tokenizer)
            with self.monitor.phase("held-out log-probs") as stats:
                logps = me.heldout_logps(model, heldout, lambdas, max_prompt_length=max_prompt_length,
                                         batch_size=self.config.batch_size, progress=self.progress)
                stats.add(heldout.response_mask.sum(), heldout.num_tokens.sum())
            reference_free = self.setting(model, "reference") == "none"
            rewards = me.implicit_rewards(logps, None if reference_free else reference_logps, heldout.num_tokens,
                                          float(self.setting(model, "beta")),
                                          self.setting(model, "logprob_reduction"))
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
                    "per_dimension": me.ranking_at_lambda(rewards, heldout, lambdas, self.config.ndcg_k),
                    "heldout_log_ratio": me.heldout_log_ratio(logps, reference_logps, mask),
                    "length_bias": {**me.length_bias_report(logps, heldout.num_tokens, mask, rewards),
                                    "points": _points(logps, heldout.num_tokens, mask)},
                }
            entries.append(entry)
        for model in self.models:
            if self.setting(model, "reference") == "none":
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
        if self.config.kl_samples <= 0 or not self.prompts:
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
                    kl = sampling.sampled_kl(model, self.reference, self.prompts, lambdas, num_samples=self.config.kl_samples,
                                       max_new_tokens=self.config.max_new_tokens,
                                       max_prompt_length=self.training.get("max_prompt_length"),
                                       batch_size=self.config.batch_size, seed=self.config.seed + 1000 * i)
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

        if self.scorer is None or self.config.grid <= 0 or not self.prompts:
            self.notes.append("controllability skipped (it needs --scorer, --grid ≥ 1 and single-turn prompts)")
            return
        grid = lambda_grid(self.dimensions, self.config.grid)
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
            "grid_n": self.config.grid, "grid": grid, "num_prompts": len(self.prompts),
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
            return sampling.generate_responses(model, self.prompts, lambdas, self.generation, seed_offset=0)

        return sample_fn

    # -------------------------------------------------------------------- win rate
    def win_rate(self) -> None:
        if self.scorer is None or not self.prompts:
            self.notes.append("win rates skipped (they need --scorer and single-turn prompts)")
            return
        scored: dict[str, np.ndarray] = {}

        def generate_and_score(model, lambdas, key):
            with self.monitor.phase("win rate") as stats:
                responses = sampling.generate_responses(model, self.prompts, lambdas, self.generation, seed_offset=0)
                flat = [r for samples in responses for r in samples]
                stats.add(len(flat), _count_tokens(model.tokenizer, flat))
                scored[key] = sampling.score_responses(self.scorer, self.prompts, responses, self.dimensions)

        # The reference sees no λ: its responses are the same for every λ, only their weighting changes.
        generate_and_score(self.reference, self.lambdas[0], "reference")
        comparisons = []
        for i, lambdas in enumerate(self.lambdas):
            for model in self.models:
                generate_and_score(model, lambdas, f"{model.label}@{i}")
            pairs = {f"{m.label} vs reference": sampling.win_rate_report(scored[f"{m.label}@{i}"], scored["reference"],
                                                                   lambdas, self.dimensions) for m in self.models}
            if len(self.models) > 1:
                pairs["model vs baseline"] = sampling.win_rate_report(scored[f"model@{i}"], scored[f"baseline@{i}"],
                                                                lambdas, self.dimensions)
            comparisons.append({"lambda": lambdas, "pairs": pairs})
        self.results["win_rate"] = {"judge": self.scorer.description, "comparisons": comparisons}

    # -------------------------------------------------------------------- lm-evaluation-harness
    def lm_eval(self) -> None:
        from lambda_dpo.evaluation.lm_eval_bridge import lambda_system_instruction, run_lm_eval

        tasks = [t.strip() for t in (self.config.lm_eval_tasks or "").split(",") if t.strip()]
        if not tasks:
            return
        if self.config.lm_eval_lambda:
            lambdas = as_lambda(self.config.lm_eval_lambda, self.dimensions, normalize=self.config.normalize)
        else:
            lambdas = {d: 1.0 / len(self.dimensions) for d in self.dimensions}
        limit = self.config.lm_eval_limit
        limit = int(limit) if limit is not None and limit >= 1 else limit
        section = {"lambda": lambdas, "models": {}}
        for model in self.models:
            with self.monitor.phase("lm-eval"), model.steered(lambdas):  # λ-adapters run under the same λ
                out = run_lm_eval(
                    model.model, model.tokenizer, tasks, include_path=self.config.lm_eval_include_path,
                    system_instruction=lambda_system_instruction(model.metadata, lambdas),
                    apply_chat_template=self.config.lm_eval_chat_template, num_fewshot=self.config.lm_eval_num_fewshot,
                    limit=limit, batch_size=self.config.lm_eval_batch_size, seed=self.config.seed,
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


def run_evaluation(config: EvalConfig) -> dict[str, Any]:
    """Every section of the evaluation; returns the results dict that
    :func:`lambda_dpo.evaluation.report.write_report` writes."""
    run = Evaluation(config)
    run.ranking()
    run.kl()
    run.controllability()
    run.win_rate()
    run.lm_eval()
    run.results["performance"] = run.monitor.summary()
    return run.results


