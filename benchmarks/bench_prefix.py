"""Prefix sharing: step time and peak memory with each prompt forwarded once, against today's path and the floor.

Same tokens for every variant (random-init Llama, random words; the setting of benchmarks/bench_train.py):

    (s) shared     LambdaDPOTrainer step with prefix_sharing: true — one row [prompt, r_1, …, r_k] per prompt
    (u) unshared   the same step with prefix_sharing: false — B·k sequences [prompt ‖ r_i]
    (c) floor      a plain transformers.Trainer step on the B·k unshared sequences with the model's own loss: the
                   least a trainer that forwards every sequence whole must spend (the old floor)

"auto" is what ``prefix_sharing: auto`` picks for the setting (its cost estimate, shared over plain, ≤ 0.9).

Settings (the λ-conditioned prompt P and each response R in tokens, k responses, B prompts per step):

    ultrafeedback   P = 64,  R = 160, k = 4, B = 2   (prompt ≈ 0.4 × response)
    qa_feedback     P = 840, R = 106, k = 4, B = 1   (the QA-Feedback sample with its passages, GPT-2 tokens:
                                                      median prompt 844, median answer 107)
    k8              P = 64,  R = 160, k = 8, B = 2

Time: the three variants of a setting run in one process, interleaved (order rotated every step), median s/step;
the ratios are medians of per-step ratios (steps of one round ran under the same load). Memory: each variant again
in its own subprocess, peak RSS over the measured steps minus the RSS after imports (bench_train's measure).

    .venv/bin/python benchmarks/bench_prefix.py                 # 7M and 30M, the three settings, 1 thread
    .venv/bin/python benchmarks/bench_prefix.py --quick         # smoke run (7M, ultrafeedback, 2 steps)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_train as bt  # noqa: E402  (a sibling script: its model shapes, records, timing and memory helpers)

RESULTS = Path(__file__).parent / "results" / "bench_prefix.json"
SETTINGS = {
    "ultrafeedback": dict(prompt_tokens=64, response_tokens=160, k=4, prompts=2),
    "qa_feedback": dict(prompt_tokens=840, response_tokens=106, k=4, prompts=1),
    "k8": dict(prompt_tokens=64, response_tokens=160, k=8, prompts=2),
}
VARIANTS = {"s": "shared prompts", "u": "unshared (today)", "c": "floor: own loss"}


def build_variant(name: str, spec: dict, tokenizer, data, workdir: Path):
    import gc

    if name == "c":
        return bt.build_variant("c", spec, tokenizer, data, workdir)
    trainer = bt.lambda_trainer(spec, tokenizer, data, workdir / name, precompute=True,
                                prefix_sharing="true" if name == "s" else "false")
    batches = bt.fixed_batches(trainer, spec["prompts"])
    gc.collect()
    bt.prepare_manual_steps(trainer, spec["total_steps"])
    return trainer, batches


def worker(spec: dict) -> dict:
    import torch

    import lambda_dpo.trainer  # noqa: F401  (imports transformers' Trainer, accelerate, datasets)
    from lambda_dpo.data import load_listwise

    torch.set_num_threads(spec["threads"])
    baseline_rss = bt.rss_bytes()
    torch.manual_seed(0)
    tokenizer = bt.word_tokenizer(bt.MODEL_SIZES[spec["size"]]["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bt.write_records(workdir / "train.jsonl", tokenizer, spec)
        data = load_listwise(str(workdir / "train.jsonl"), keep_in_memory=True)
        if spec["mode"] == "memory":
            trainer, batches = build_variant(spec["variant"], spec, tokenizer, data, workdir)
            return bt.memory_over_steps(trainer, batches, spec["warmup"], spec["memory_steps"], baseline_rss)
        variants = {name: build_variant(name, spec, tokenizer, data, workdir) for name in VARIANTS}
        times = bt.interleaved_times(variants, spec["warmup"], spec["steps"])
        # forwarded positions per step (real + padding) of each layout, from the first batch
        from lambda_dpo.logprobs.prefix_sharing import (
            estimated_cost_ratio,
            shared_and_plain_tokens,
            sharing_pays,
        )

        batch, model = variants["u"][1][0], variants["u"][0].model
        layout = (batch["prompt_input_ids"], batch["response_input_ids"])
        times["positions"] = dict(zip(("shared", "plain"), shared_and_plain_tokens(*layout)))
        times["positions"] |= {"estimated_cost_ratio": estimated_cost_ratio(model, *layout),
                               "auto_shares": sharing_pays(model, *layout)}
        return times


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", nargs="+", choices=["7m", "30m"], default=["7m", "30m"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--m", type=int, default=4, help="preference dimensions")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--memory-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 7m, ultrafeedback, 2 steps")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.model_size, args.settings, args.steps = ["7m"], ["ultrafeedback"], 2
        if args.output == RESULTS:
            args.output = Path(tempfile.gettempdir()) / "bench_prefix_quick.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    load_at_start = os.getloadavg()[0]
    rows, ratios = [], []
    for size in args.model_size:
        params = bt.count_parameters(size)
        for setting in args.settings:
            shape = SETTINGS[setting]
            spec = dict(shape, size=size, m=args.m, device="cpu", dtype="float32", lora=False, threads=args.threads,
                        max_length=shape["prompt_tokens"] + shape["response_tokens"], warmup=args.warmup,
                        steps=args.steps, memory_steps=args.memory_steps,
                        total_steps=args.warmup + max(args.steps, args.memory_steps))
            print(f"running {size} {setting} …", file=sys.stderr, flush=True)
            times = bt.run_worker(__file__, dict(spec, mode="time"))
            for name in VARIANTS:
                memory = bt.run_worker(__file__, dict(spec, mode="memory", variant=name))
                seconds = bt.median(times[name]["seconds"])
                rows.append({"size": size, "parameters": params, "setting": setting, "variant": name,
                             "variant_name": VARIANTS[name], "step_seconds": seconds,
                             "step_seconds_all": times[name]["seconds"], "losses": times[name]["losses"],
                             "prompts_per_second": shape["prompts"] / seconds, **memory})
            s, u, c = (times[v]["seconds"] for v in "suc")
            ratios.append({"size": size, "setting": setting, **shape, **times["positions"],
                           "speedup_vs_unshared": bt.paired_ratio(u, s), "shared_over_floor": bt.paired_ratio(s, c),
                           "unshared_over_floor": bt.paired_ratio(u, c),
                           "losses_equal": max(abs(a - b) for a, b in zip(times["s"]["losses"],
                                                                           times["u"]["losses"])) < 1e-4})
    report(rows, ratios, args, load_at_start)
    return 0


def report(rows: list[dict], ratios: list[dict], args, load_at_start: float) -> None:
    info = bt.machine_info("cpu", args.threads) | {"load_average_1min_at_start": load_at_start}
    print(f"\n{info['date']}  {info['cpu']} ({info['cores']} cores, {args.threads} torch threads)  "
          f"torch {info['torch']}; median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(f"{'model':<13}{'setting':<15}{'variant':<22}{'s/step':>8}{'prompts/s':>11}{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['size'] + ' (' + format(r['parameters'] / 1e6, '.1f') + 'M)':<13}{r['setting']:<15}"
              f"({r['variant']}) {r['variant_name']:<18}{r['step_seconds']:>8.3f}{r['prompts_per_second']:>11.2f}"
              f"{r['peak_rss_mib']:>14.0f}")
    print(f"\n{'model':<6}{'setting':<15}{'P':>5}{'R':>5}{'k':>3}{'positions s/u':>15}{'speed-up':>10}"
          f"{'(s)/(c)':>9}{'(u)/(c)':>9}{'same loss':>11}{'est. cost':>11}{'auto':>7}")
    for r in ratios:
        print(f"{r['size']:<6}{r['setting']:<15}{r['prompt_tokens']:>5}{r['response_tokens']:>5}{r['k']:>3}"
              f"{str(r['shared']) + '/' + str(r['plain']):>15}{r['speedup_vs_unshared']:>9.2f}×"
              f"{r['shared_over_floor']:>9.2f}{r['unshared_over_floor']:>9.2f}{str(r['losses_equal']):>11}"
              f"{r['estimated_cost_ratio']:>11.2f}{'shares' if r['auto_shares'] else 'plain':>7}")
    out = {"benchmark": "bench_prefix", "machine": info,
           "memory_measure": "VmHWM (reset after setup + warm-up) minus RSS after imports",
           "settings": {"model_size": args.model_size, "settings": {k: SETTINGS[k] for k in args.settings},
                        "m": args.m, "steps": args.steps, "warmup": args.warmup, "quick": args.quick},
           "ratios": ratios, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    raise SystemExit(main())
