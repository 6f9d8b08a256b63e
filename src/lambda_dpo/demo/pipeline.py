"""`lambda-dpo demo`: the built-in end-to-end run, offline, on a CPU, in minutes.

1. writes the procedural multi-objective world (`world.py`) as native listwise JSONL, loaded back through the
   project's own data path;
2. trains a tokenizer on the world's text and a tiny random-init Llama (`tiny.py`), then an SFT warm-up on every
   candidate response, so that the reference can produce every style (with ``conditioning: text``, half of them
   behind a random, uninformative λ line, so that the line's format is familiar);
3. from that SFT model, with the same data, step budget and settings (those of ``configs/recipes/steerable.yaml``),
   trains three models:
   - **λ-DPO**: listwise loss, the policy conditioned on λ by λ-mixed adapters (``conditioning: lora``,
     `lambda_adapters.py`), λ drawn by ``DemoSettings.schedule``:
     `unimodal` with ``uniform_fraction`` 0.3, i.e. one-hot λ 70 % of the time and uniform on the simplex 30 %.
     One-hot λ teaches the conditioning fastest at this budget (a few hundred steps of a sub-1M model; plain
     `uniform` barely separates the vertices, see `benchmarks/ablate_schedules.py`), but alone it never shows the
     policy a mixture, and between the vertices the policy then acts as if one dimension had all the weight (tuning
     runs, 600 steps, τ 0.1: Spearman of the grid means 0.56 / 0.76 / 0.91 with one-hot λ only, 0.76 / 0.82 / 0.95
     with 30 % uniform draws; 50 % lost politeness);
   - **unconditioned**: listwise loss, `fixed` uniform λ, λ not shown (what averaging the objectives gives);
   - **DPO**: pairwise best-vs-worst DPO under the λ-mixed target, same schedule, λ shown.
   All three add the NLL anchor (``nll_weight``, :func:`lambda_dpo.losses.target_nll_loss`; target-weighted for the
   listwise models, the best response's NLL for DPO, as RPO): without it a sub-1M model pushes every response's
   likelihood down at once and samples drift off the world's language (KL proxy −48 nats, garbled text, in our runs);
4. evaluates controllability on held-out prompts over a λ simplex grid (sampled responses scored by the world's
   exact scorers): per-dimension Spearman(λ_d, score_d) of the grid's mean scores (the target metric) and over every
   single response, Pareto front and hypervolume (one shared reference point), and held-out ranking accuracy of the
   implicit reward;
5. writes `report.md`, `report.json`, PNG plots and the models into the run directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace

from lambda_dpo.atomic import atomic_write

DEMO_DIR_DEFAULT = "runs/demo"


@dataclass(frozen=True)
class DemoSettings:
    num_train: int = 4800  # dpo_steps × batch_size: one epoch, so the reference pass covers only what is used
    num_heldout: int = 16  # the world's distinct held-out prompts
    k: int = 4
    sft_steps: int = 500
    sft_learning_rate: float = 3e-3
    dpo_steps: int = 600
    batch_size: int = 8
    learning_rate: float = 1e-3
    beta: float = 1.0
    tau: float = 0.05  # scores lie in [0, 1]: τ = 1 makes targets nearly uniform; 0.05 beat 0.1 on all 3 seeds
    nll_weight: float = 3.0
    schedule: str = "unimodal"
    uniform_fraction: float = 0.3  # of the unimodal schedule: share of λ drawn uniformly (mixtures, not vertices)
    grid_n: int = 3
    eval_prompts: int = 16
    samples: int = 16  # per prompt and λ: generation is cheap next to training, and fewer make the grid means noisy
    max_new_tokens: int = 48
    temperature: float = 1.0  # samples of π itself: lower temperatures favour the longest continuation
    hidden: int = 128
    layers: int = 4
    # How the λ-conditioned methods see λ (LambdaDPOConfig.conditioning). λ-adapters beat the λ line on every world
    # we measured (benchmarks/steering_worlds.py; on `travel` the text-conditioned policy did not steer at all).
    conditioning: str = "lora"
    tau_scale: str = "range"  # τ relative to each dimension's score range (LambdaDPOConfig.tau_scale)
    seed: int = 0


# --quick: fewer steps at a larger learning rate (at 1e-3, 250 steps barely start to steer `polite` and `detailed`)
QUICK = DemoSettings(num_train=2000, sft_steps=250, dpo_steps=250, learning_rate=2e-3, eval_prompts=12, samples=8)

ORACLE = "oracle"  # samples the λ-mixed target among fresh candidate sets for each prompt (oracle_controllability)
ORACLE_RECORDS = 200  # fresh candidate sets per prompt the oracle draws from
ORACLE_SAMPLES = 256  # its samples per prompt and λ
METHODS = {  # None: the schedule of DemoSettings
    "λ-DPO": {"loss": "listwise", "lambda_schedule": None, "condition_on_lambda": True},
    "unconditioned": {"loss": "listwise", "lambda_schedule": "fixed", "condition_on_lambda": False},
    "DPO": {"loss": "dpo", "lambda_schedule": None, "condition_on_lambda": True},
}


def _log(message: str) -> None:
    print(message, flush=True)


def _train_method(name: str, options: dict, sft_dir: str, out_dir: str, train, heldout, tokenizer, s: DemoSettings):
    from transformers import AutoModelForCausalLM

    from lambda_dpo.trainer import LambdaDPOConfig, LambdaDPOTrainer

    settings = dict(
        output_dir=out_dir, max_steps=s.dpo_steps, per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=16, learning_rate=s.learning_rate, lr_scheduler_type="cosine", warmup_steps=10,
        beta=s.beta, tau=s.tau, tau_scale=s.tau_scale, nll_weight=s.nll_weight, logprob_reduction="sum",
        max_length=160, conditioning=s.conditioning,
        max_prompt_length=64, logging_steps=25,
        save_strategy="no", report_to="none", use_cpu=True, seed=s.seed, reference="model",
        reference_model=sft_dir, reference_cache_dir=os.path.join(os.path.dirname(out_dir), "reference_cache"),
        dataloader_num_workers=0,
    )
    if options.get("lambda_schedule") is None:  # the demo's own schedule
        options = options | {"lambda_schedule": s.schedule}
        if s.schedule == "unimodal":
            options["lambda_schedule_kwargs"] = {"uniform_fraction": s.uniform_fraction}
    args = LambdaDPOConfig(**(settings | options))
    policy = AutoModelForCausalLM.from_pretrained(sft_dir)
    trainer = LambdaDPOTrainer(policy, args, train_dataset=train, eval_dataset=heldout, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    metrics = trainer.evaluate()
    trainer.save_final(out_dir)
    return trainer, metrics, seconds


def _controllability(model, tokenizer, metadata, prompts, s: DemoSettings, label: str, world=None):
    from lambda_dpo.demo.worlds import WORLDS
    from lambda_dpo.evaluation.controllability import evaluate_controllability, lambda_grid

    world = world or WORLDS["demo"]
    DIMENSIONS, scorer = world.dimensions, world.scorer
    from lambda_dpo.generation import sample_responses

    def sample_fn(batch, weights, num_samples):
        return sample_responses(model, tokenizer, metadata, batch, weights, num_samples,
                                max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed)

    _log(f"  controllability of {label}: {len(lambda_grid(DIMENSIONS, s.grid_n))} λ × {len(prompts)} prompts × "
         f"{s.samples} samples")
    return evaluate_controllability(sample_fn, scorer, prompts, DIMENSIONS, lambda_grid(DIMENSIONS, s.grid_n),
                                    num_samples=s.samples, keep_responses=True)


def prepare(out: str, s: DemoSettings, world=None):
    """Steps 1–2, shared by the demo and the schedule ablation: the world's data (loaded back through the project's
    own data path), the tokenizer, and the SFT reference in ``out/sft``. ``world``: one of
    :data:`lambda_dpo.demo.worlds.WORLDS` (default: the demo's own).

    Returns ``(train, heldout, tokenizer, sft_dir, sft_seconds)``."""
    from lambda_dpo.data import load_listwise
    from lambda_dpo.demo.tiny import make_tiny_llama, train_tokenizer
    from lambda_dpo.demo.worlds import WORLDS
    from lambda_dpo.sft import run_sft

    world = world or WORLDS["demo"]
    DIMENSIONS, vocabulary_texts, write_world = world.dimensions, world.vocabulary_texts, world.write_world
    os.makedirs(out, exist_ok=True)
    _log(f"[1/5] writing the world ({s.num_train} train prompts × k={s.k}, dimensions {DIMENSIONS}) to {out}/data")
    train_path, heldout_path = write_world(os.path.join(out, "data"), seed=s.seed, num_train=s.num_train,
                                           num_heldout=s.num_heldout, k=s.k)
    train = load_listwise(train_path, format="listwise", dimensions=DIMENSIONS, strict=True, keep_in_memory=True)
    heldout = load_listwise(heldout_path, format="listwise", dimensions=DIMENSIONS, strict=True, keep_in_memory=True)

    _log("[2/5] tokenizer + tiny Llama + SFT warm-up on every candidate response")
    tokenizer = train_tokenizer(vocabulary_texts())
    model = make_tiny_llama(tokenizer, hidden=s.hidden, layers=s.layers, seed=s.seed)
    _log(f"  model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}")
    sft_dir = os.path.join(out, "sft")
    started = time.perf_counter()
    # conditioning: text warms up on λ lines that mean nothing yet (sft.with_random_lambda_lines); λ-adapters start
    # at zero, so their warm-up is the plain one.
    run_sft(model, tokenizer, train, sft_dir, lambda_line_fraction=0.5 if s.conditioning == "text" else 0.0,
            max_steps=s.sft_steps,
            learning_rate=s.sft_learning_rate, per_device_train_batch_size=16, lr_scheduler_type="cosine",
            warmup_steps=10, logging_steps=50, report_to="none", use_cpu=True, seed=s.seed, max_length=160,
            max_prompt_length=64)
    return train, heldout, tokenizer, sft_dir, time.perf_counter() - started


def oracle_controllability(heldout, prompts: list[str], s: DemoSettings, world=None, score_scale=None,
                           fresh_records: int = ORACLE_RECORDS, samples: int = ORACLE_SAMPLES):
    """Controllability of the *oracle*: a policy that answers each prompt with a candidate of a record for that
    prompt, drawn from the record's λ-mixed target ``Σ_d λ_d softmax(s_d/τ)`` — exactly what λ-DPO's loss asks of
    the policy. Its numbers are the yardstick of this world and evaluation (e.g. concise and detailed conflict, so
    neither reaches Spearman 1); a model can beat it, being free to answer outside the candidates and to be sharper
    than the target. Same prompts, grid and scorer as the models; ``score_scale`` ``[m]`` divides the scores as
    ``tau_scale: range`` does in training (the training data's score range per dimension).

    The records are ``fresh_records`` new candidate sets per prompt (``world.fresh_records``), one drawn at random
    for every sample: the target behaviour *given the prompt*, which is all a policy sees, estimated with
    ``samples`` draws per prompt and λ (many more than a model gets: the yardstick should carry little noise of its
    own). ``fresh_records=0`` uses the held-out records' own candidates instead; that ties the yardstick to a few
    particular candidate sets (on `support`, seed 0, its 8 distinct held-out prompts put it 0.12 away from the
    population oracle on range-scaled scores: as far as the trained models were)."""
    import torch

    from lambda_dpo.demo.worlds import WORLDS
    from lambda_dpo.evaluation.controllability import evaluate_controllability, lambda_grid
    from lambda_dpo.targets import mix_targets, scores_to_tensor, target_probs_from_scores

    world = world or WORLDS["demo"]
    DIMENSIONS, scorer = world.dimensions, world.scorer
    generator = torch.Generator().manual_seed(s.seed)

    def targets(record):
        scores = scores_to_tensor(record["scores"], DIMENSIONS)[None]
        probs, mask = target_probs_from_scores(scores, s.tau, score_scale=score_scale)  # as in training
        return record["responses"], probs.double(), mask

    pools = {}
    for prompt in dict.fromkeys(prompts):
        records = (world.fresh_records(prompt, fresh_records, seed=s.seed) if fresh_records
                   else [r for r in heldout if r["prompt"][-1]["content"] == prompt])
        pools[prompt] = [targets(r) for r in records]

    def sample_fn(batch, weights, num_samples):
        lam = torch.tensor([[weights[d] for d in DIMENSIONS]], dtype=torch.float64)
        out = []
        for prompt in batch:
            pool = pools[prompt]
            which = torch.randint(len(pool), (num_samples,), generator=generator).bincount(minlength=len(pool))
            answers = []
            for (responses, probs, mask), count in zip(pool, which.tolist()):
                if count:
                    picks = torch.multinomial(mix_targets(probs, lam, mask)[0], count, replacement=True,
                                              generator=generator)
                    answers += [responses[i] for i in picks.tolist()]
            out.append(answers)
        return out

    return evaluate_controllability(sample_fn, scorer, prompts, DIMENSIONS, lambda_grid(DIMENSIONS, s.grid_n),
                                    num_samples=samples if fresh_records else s.samples, progress=False)


def target_gap(result, oracle) -> float | None:
    """Mean |model's mean score − the oracle's| over grid points and dimensions: how far the behaviour at each λ is
    from the trade-off the λ-mixed target asks for. Spearman only checks the direction; this checks the amount
    (e.g. a model that jumps from one extreme to the other as λ crosses ½ has a perfect direction and a large gap).
    ``None`` for the oracle itself."""
    import numpy as np

    if result is oracle:
        return None
    return float(np.abs(np.asarray(result.mean_scores) - np.asarray(oracle.mean_scores)).mean())


def run_demo(out: str = DEMO_DIR_DEFAULT, quick: bool = False, seed: int = 0,
             settings: DemoSettings | None = None, world: str = "demo", threads: int | None = None) -> dict:
    """Run the whole demo into ``out`` and return the summary (also written to ``out/report.json``).

    ``settings`` overrides the full / ``quick`` presets; ``world`` names one of
    :data:`lambda_dpo.demo.worlds.WORLDS` (the demo's own by default)."""
    import torch

    from lambda_dpo.demo.worlds import get_world
    from lambda_dpo.evaluation.controllability import shared_hypervolumes
    from lambda_dpo.evaluation.plots import plot_pareto_grid, plot_score_vs_lambda
    from lambda_dpo.generation import load_model

    s = replace(settings or (QUICK if quick else DemoSettings()), seed=seed)
    # Half the cores by default: on 2 shared cores, 2 threads were 1.4× faster than 1 on a quiet machine but 2.9×
    # slower beside one other busy process (benchmarks/bench_threads.py, 2026-12-01).
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    started = time.perf_counter()
    the_world = get_world(world)
    DIMENSIONS = the_world.dimensions
    train, heldout, tokenizer, sft_dir, sft_seconds = prepare(out, s, the_world)

    _log(f"[3/5] training {len(METHODS)} models from the SFT model, {s.dpo_steps} steps each")
    models, rows = {}, {}
    for i, (label, options) in enumerate(METHODS.items()):
        _log(f"  ({i + 1}/{len(METHODS)}) {label}: {options | {'lambda_schedule': options['lambda_schedule'] or s.schedule}}")
        out_dir = os.path.join(out, "models", label.replace("λ", "lambda").lower())
        _, metrics, seconds = _train_method(label, options, sft_dir, out_dir, train, heldout, tokenizer, s)
        models[label] = out_dir
        rows[label] = {"heldout_accuracy": metrics.get("eval_accuracy_mean"), "train_seconds": seconds,
                       "lambda_reliance": metrics.get("eval_lambda_reliance_relative"),
                       "lambda_logp_shift": metrics.get("eval_lambda_logp_shift")}

    _log("[4/5] controllability on held-out prompts over the λ grid")
    prompts = [r["prompt"][-1]["content"] for r in heldout.select(range(min(s.eval_prompts, len(heldout))))]
    results = {}
    for label, path in models.items():
        model, _, metadata = load_model(path, device="cpu")
        results[label] = _controllability(model, tokenizer, metadata, prompts, s, label, the_world)
    from lambda_dpo.targets import score_ranges

    scale = score_ranges(train, DIMENSIONS) if s.tau_scale == "range" else None
    results[ORACLE] = oracle_controllability(heldout, prompts, s, the_world, scale)  # the ceiling: no model, the target itself
    rows[ORACLE] = {"heldout_accuracy": None, "train_seconds": None, "lambda_reliance": None}
    reference_point, volumes = shared_hypervolumes(results)
    for label, result in results.items():
        rows[label].update({"spearman": result.spearman_rows, "spearman_means": result.spearman_means,
                            "hypervolume": volumes[label], "target_gap": target_gap(result, results[ORACLE])})

    _log("[5/5] report and plots")
    plot_score_vs_lambda(results, os.path.join(out, "score_vs_lambda.png"))
    plot_pareto_grid(results, os.path.join(out, "pareto.png"))
    summary = {
        "settings": asdict(s), "quick": quick, "world": world, "dimensions": DIMENSIONS, "methods": rows,
        "hypervolume_reference_point": [float(v) for v in reference_point],
        "sft_seconds": sft_seconds, "total_seconds": time.perf_counter() - started,
        "controllability": {label: r.to_dict(include_scores=False) for label, r in results.items()},
        "examples": _examples(results, prompts),
    }
    _write_atomic(os.path.join(out, "report.json"), json.dumps(summary, indent=2, ensure_ascii=False))
    _write_atomic(os.path.join(out, "report.md"), render_report(summary))
    _log("\n" + method_table(summary) + f"\n\nwhole demo: {summary['total_seconds']:.0f} s; report: "
         f"{os.path.join(out, 'report.md')}")
    return summary


def _examples(results, prompts) -> dict:
    """One held-out prompt's first sample at each vertex of the grid, per model: what steering looks like."""
    examples = {}
    for label, result in results.items():
        vertices = [i for i, lam in enumerate(result.grid) if max(lam.values()) == 1.0]
        examples[label] = {
            max(result.grid[i], key=result.grid[i].get): result.responses[i][0][0] for i in vertices
        } if result.responses else {}
    return {"prompt": prompts[0], "responses": examples}


def method_table(summary: dict) -> str:
    dims = summary["dimensions"]
    header = ("| method | " + " | ".join(f"Spearman {d}" for d in dims)
              + " | per response | gap to target | hypervolume | held-out ranking acc. | λ-reliance (relative) "
              "| train time (s) |")
    lines = [header, "|" + "---|" * (len(dims) + 7)]
    for label, row in summary["methods"].items():
        means = [_signed(row["spearman_means"][d]) for d in dims]
        rows = " / ".join(_signed(row["spearman"][d]) for d in dims)
        lines.append(f"| {label} | " + " | ".join(means) + f" | {rows} | {_or_dash(row.get('target_gap'), '.3f')} | "
                     f"{row['hypervolume']:.4f} | {_or_dash(row['heldout_accuracy'], '.3f')} | "
                     f"{_or_dash(row.get('lambda_reliance'), '.2f')} | {_or_dash(row['train_seconds'], '.0f')} |")
    return "\n".join(lines)


def _or_dash(value, spec: str) -> str:
    """A metric that does not apply to a row (the oracle's accuracy, gap and train time) is ``—``."""
    return "—" if value is None else format(value, spec)


def _signed(value) -> str:
    """``+0.83``; a model whose mean score does not move with λ at all has no rank correlation: ``n/a``."""
    return "n/a" if value is None or value != value else f"{value:+.2f}"


def render_report(summary: dict) -> str:
    s = summary["settings"]
    dims = summary["dimensions"]
    lines = [
        "# lambda-dpo demo report", "",
        f"Run {'--quick' if summary['quick'] else '(full)'}, seed {s['seed']}, whole demo "
        f"{summary['total_seconds']:.0f} s (SFT {summary['sft_seconds']:.0f} s).", "",
        f"World: {s['num_train']} training prompts × k = {s['k']} candidates, dimensions {', '.join(dims)}; "
        f"tiny Llama (hidden {s['hidden']}, {s['layers']} layers); SFT {s['sft_steps']} steps; each method "
        f"{s['dpo_steps']} steps, batch {s['batch_size']}, β = {s['beta']}, τ = {s['tau']}, NLL anchor "
        f"{s['nll_weight']}, λ-DPO schedule `{s['schedule']}`.", "",
        f"Controllability: {s['eval_prompts']} held-out prompts × {s['samples']} samples (temperature "
        f"{s['temperature']}) at each of the λ grid's points (lattice step 1/{s['grid_n']}). **Spearman d** = "
        "Spearman(λ_d, mean score_d) over the grid points: does the behaviour follow λ_d? **Per response** = the "
        "same over every single sampled response, noise included. The **oracle** row is no model: it answers each "
        f"prompt with a candidate drawn from the λ-mixed target of one of {ORACLE_RECORDS} fresh candidate sets the "
        f"world draws for that prompt ({ORACLE_SAMPLES} samples per prompt and λ; what the loss asks of the policy, "
        "given the prompt), the yardstick of this world and evaluation (a model can beat it: it is not limited to the "
        "candidates and can be sharper than the target); one response is one draw from a broad distribution, hence "
        "its low per-response numbers. **Gap to target** = mean |mean score − the oracle's| over the grid points and "
        "dimensions: Spearman checks that behaviour moves the right way, the gap how far it is from the trade-off "
        "that λ asks for. Hypervolume of the grid's mean score vectors against one "
        f"shared reference point {[round(v, 3) for v in summary['hypervolume_reference_point']]}; held-out ranking "
        "accuracy = mean over dimensions of the implicit reward's pairwise accuracy, policy conditioned on the "
        "one-hot λ of that dimension.", "",
        method_table(summary), "",
        "![score vs λ](score_vs_lambda.png)", "", "![Pareto fronts](pareto.png)", "",
        f"## What steering looks like (held-out prompt: “{summary['examples']['prompt']}”)", "",
    ]
    for label, by_vertex in summary["examples"]["responses"].items():
        if not by_vertex:
            continue
        lines.append(f"**{label}**")
        lines.append("")
        for dim, text in by_vertex.items():
            lines.append(f"- λ = {dim}: {text}")
        lines.append("")
    return "\n".join(lines)


def _write_atomic(path: str, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)
