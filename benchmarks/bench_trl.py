"""Per-response-token training throughput and peak memory: lambda-dpo vs TRL's DPOTrainer (issue 8).

Same pairwise data (k = 2) and the same random-init model for both, same batch size (B pairs per step), max
length, precision, loss (sigmoid DPO, β = 0.1, response log-probs summed over tokens: TRL's definition), reference
handled the same way (computed once before training: TRL ``precompute_ref_log_probs=True``, ours
``precompute_reference=True``; neither keeps a reference model in memory during training), same AdamW, learning
rate and gradient clipping. Ours runs ``loss=dpo`` with ``condition_on_lambda=False``: with one preference
dimension λ ≡ 1 and there is nothing to steer, so the policy sees the same prompt tokens as TRL's. The script checks
that both trainers tokenise every prompt, chosen and rejected response to the same ids, and reports how far their
losses drift apart step by step (same weights, same batches: they should agree to float precision).

What still differs (each trainer's own defaults, kept because they are what a user gets): TRL computes per-token
entropy, mean logits and top-1 accuracy for its metrics in the fused head and logs them every step; on non-Triton
devices (CPU) its fused head scores every position, prompt and padding included, in tiles of 32,768 positions;
ours scores response positions only, in checkpointed chunks of 128, and computes per-dimension ranking metrics.
TRL's DPOConfig defaults gradient_checkpointing=True and bf16=True; both are off here, as ours has them
(`--gradient-checkpointing` turns checkpointing on for both).

Timing and memory are measured as in bench_train.py: one process with both trainers, steps interleaved (order
alternating), median s/step; then each trainer alone in a subprocess for peak RSS (VmHWM) or CUDA peak.

    .venv/bin/python benchmarks/bench_trl.py                      # 7M and 30M Llama, 1 and 4 pairs per step, CPU
    .venv/bin/python benchmarks/bench_trl.py --quick
    .venv/bin/python benchmarks/bench_trl.py --device cuda --model-size 1.5b --max-length 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_train import (
    MODEL_SIZES,
    build_model,
    count_parameters,
    interleaved_times,
    machine_info,
    median,
    memory_over_steps,
    paired_ratio,
    prepare_manual_steps,
    random_words,
    rss_bytes,
    run_worker,
    word_tokenizer,
)

RESULTS = Path(__file__).parent / "results" / "bench_trl.json"
TRAINERS = {"ours": "lambda-dpo LambdaDPOTrainer", "trl": "TRL DPOTrainer"}
BETA, LEARNING_RATE = 0.1, 1e-4


def write_pairs(path: Path, tokenizer, spec: dict) -> None:
    """``2·B`` conversational pairwise rows (TRL's format) of random words: every prompt is exactly
    ``prompt_tokens`` long once chat-templated, every response ``response_tokens`` (its EOS included)."""
    import torch

    from lambda_dpo.data import encode_prompt

    overhead = len(encode_prompt(tokenizer, [{"role": "user", "content": ""}], None))
    generator = torch.Generator().manual_seed(0)
    vocab = MODEL_SIZES[spec["size"]]["vocab_size"]

    def message(role: str, n: int) -> list[dict]:
        return [{"role": role, "content": random_words(generator, n, vocab)}]

    with open(path, "w") as f:
        for _ in range(2 * spec["prompts"]):
            row = {"prompt": message("user", spec["prompt_tokens"] - overhead),
                   "chosen": message("assistant", spec["response_tokens"] - 1),
                   "rejected": message("assistant", spec["response_tokens"] - 1)}
            f.write(json.dumps(row) + "\n")


def common_args(spec: dict, name: str, workdir: Path) -> dict:
    return dict(output_dir=str(workdir / f"out-{name}"), per_device_train_batch_size=spec["prompts"],
                max_steps=spec["total_steps"], learning_rate=LEARNING_RATE, beta=BETA, max_length=spec["max_length"],
                use_cpu=spec["device"] == "cpu", report_to="none", save_strategy="no", logging_strategy="no",
                disable_tqdm=True, seed=0, gradient_checkpointing=spec.get("gradient_checkpointing", False))


def ours_trainer(spec: dict, tokenizer, path: Path, workdir: Path):
    from lambda_dpo.data import load_listwise
    from lambda_dpo.trainer import LambdaDPOConfig, LambdaDPOTrainer

    args = LambdaDPOConfig(
        **common_args(spec, "ours", workdir), loss="dpo", logprob_reduction="sum", condition_on_lambda=False,
        lambda_schedule="fixed", precompute_reference=True, reference="model",
        max_prompt_length=spec["prompt_tokens"], per_device_eval_batch_size=spec["prompts"],
        reference_cache_dir=str(workdir / "cache"),
    )
    data = load_listwise(str(path), format="pairwise", keep_in_memory=True)
    # The reference is the initial policy, as TRL's is when it precomputes without a ref_model
    policy = build_model(spec["size"], 0, spec["dtype"], spec["device"], lora=False)
    reference = build_model(spec["size"], 0, spec["dtype"], spec["device"], lora=False)
    return LambdaDPOTrainer(policy, args, train_dataset=data, processing_class=tokenizer, ref_model=reference)


def trl_trainer(spec: dict, tokenizer, path: Path, workdir: Path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**common_args(spec, "trl", workdir), loss_type=["sigmoid"], precompute_ref_log_probs=True,
                     precompute_ref_batch_size=spec["prompts"], bf16=False)
    with open(path) as f:
        data = Dataset.from_list([json.loads(line) for line in f])
    policy = build_model(spec["size"], 0, spec["dtype"], spec["device"], lora=False)
    return DPOTrainer(policy, args=args, train_dataset=data, processing_class=tokenizer)


def check_same_tokens(ours, trl) -> None:
    """Both trainers must train on identical token ids, or the comparison means nothing."""
    for i, (a, b) in enumerate(zip(ours.train_dataset, trl.train_dataset)):
        if a["prompt_input_ids"] != b["prompt_ids"] or a["response_input_ids"] != [b["chosen_ids"], b["rejected_ids"]]:
            raise AssertionError(f"row {i}: lambda-dpo and TRL tokenised it differently; the comparison is unfair")


def build(name: str, spec: dict, tokenizer, path: Path, workdir: Path):
    """(trainer, batches): the trainer's own collator over consecutive rows, collated before any timing."""
    import gc

    trainer = (ours_trainer if name == "ours" else trl_trainer)(spec, tokenizer, path, workdir)
    dataset, size = trainer.train_dataset, spec["prompts"]
    batches = [trainer.data_collator([dataset[i] for i in range(start, start + size)])
               for start in range(0, len(dataset), size)]
    gc.collect()
    prepare_manual_steps(trainer, spec["total_steps"])
    return trainer, batches


def worker(spec: dict) -> dict:
    import torch
    import trl  # noqa: F401

    import lambda_dpo.trainer  # noqa: F401

    torch.set_num_threads(spec["threads"])
    baseline_rss = rss_bytes()
    tokenizer = word_tokenizer(MODEL_SIZES[spec["size"]]["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_pairs(workdir / "pairs.jsonl", tokenizer, spec)
        if spec["mode"] == "memory":
            trainer, batches = build(spec["trainer"], spec, tokenizer, workdir / "pairs.jsonl", workdir)
            return memory_over_steps(trainer, batches, spec["warmup"], spec["memory_steps"], baseline_rss)
        built = {name: build(name, spec, tokenizer, workdir / "pairs.jsonl", workdir) for name in TRAINERS}
        check_same_tokens(built["ours"][0], built["trl"][0])
        return interleaved_times(built, spec["warmup"], spec["steps"])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--model-size", nargs="+", choices=list(MODEL_SIZES), default=["7m", "30m"])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4], help="B, pairs per step (one setting each)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence: prompt + response")
    parser.add_argument("--prompt-length", type=int, help="prompt tokens (default max_length // 4)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="model weights, both trainers (default: fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each decoder layer in backward (both trainers)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per trainer")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trainer")
    parser.add_argument("--memory-steps", type=int, default=1, help="steps measured in each memory subprocess")
    parser.add_argument("--quick", action="store_true", help="smoke run: 7m, B=1, max_length 128, 2 timed steps")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a JSON spec, run by run_worker
    args = parser.parse_args(argv)
    if args.quick:
        args.model_size, args.prompts, args.max_length, args.steps = ["7m"], [1], 128, 2
        if args.output == RESULTS:
            args.output = Path(tempfile.gettempdir()) / "bench_trl_quick.json"  # a smoke run, not a result
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    load_at_start = os.getloadavg()[0]
    prompt_tokens = args.prompt_length or args.max_length // 4
    common = dict(device=args.device, max_length=args.max_length, prompt_tokens=prompt_tokens,
                  response_tokens=args.max_length - prompt_tokens, dtype=args.dtype, threads=args.threads,
                  warmup=args.warmup, steps=args.steps, memory_steps=args.memory_steps,
                  total_steps=args.warmup + max(args.steps, args.memory_steps), lora=False,
                  gradient_checkpointing=args.gradient_checkpointing)
    rows = []
    for size in args.model_size:
        params = count_parameters(size)
        for prompts in args.prompts:
            spec = dict(common, size=size, prompts=prompts)
            print(f"running {size} B={prompts} …", file=sys.stderr, flush=True)
            times = run_worker(__file__, dict(spec, mode="time"))
            drift = max(abs(a - b) for a, b in zip(times["ours"]["losses"], times["trl"]["losses"]))
            for name in TRAINERS:
                memory = run_worker(__file__, dict(spec, mode="memory", trainer=name))
                seconds = median(times[name]["seconds"])
                rows.append({"size": size, "parameters": params, "prompts": prompts, "trainer": name,
                             "step_seconds": seconds, "step_seconds_all": times[name]["seconds"],
                             "losses": times[name]["losses"], "max_loss_difference": drift,
                             "response_tokens_per_second": prompts * 2 * common["response_tokens"] / seconds,
                             **memory})
    report(rows, args, common, load_at_start)
    return 0


def report(rows: list[dict], args, common: dict, load_at_start: float) -> None:
    cuda = args.device.startswith("cuda")
    info = machine_info(args.device, args.threads) | {"load_average_1min_at_start": load_at_start}
    import transformers
    import trl

    info |= {"trl": trl.__version__, "transformers": transformers.__version__}
    print(f"\n{info['date']}  {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads)"
          f"{'  ' + info['gpu'] if cuda else ''}  torch {info['torch']}  trl {info['trl']}  device {args.device}  "
          f"{args.dtype}")
    print(f"pairwise DPO (sigmoid, β={BETA}, sum of response log-probs, reference precomputed); "
          f"{common['prompt_tokens']} prompt + {common['response_tokens']} response tokens; median of {args.steps} "
          f"interleaved steps after {args.warmup} warm-up")
    memory_column = "CUDA peak MiB" if cuda else "peak RSS MiB"
    print(f"{'model':<14}{'B':>3} {'trainer':<28}{'s/step':>8}{'resp tok/s':>12}{memory_column:>15}"
          f"{'step Δ MiB':>12}{'max |Δloss|':>13}")
    key = {(r["size"], r["prompts"], r["trainer"]): r for r in rows}
    for r in rows:
        peak = r["cuda_peak_mib"] if cuda else r["peak_rss_mib"]
        step = r["cuda_step_mib"] if cuda else r["step_rss_mib"]
        print(f"{r['size'] + ' (' + format(r['parameters'] / 1e6, '.1f') + 'M)':<14}{r['prompts']:>3} "
              f"{TRAINERS[r['trainer']]:<28}{r['step_seconds']:>8.3f}{r['response_tokens_per_second']:>12.0f}"
              f"{peak:>15.0f}{step:>12.0f}{r['max_loss_difference']:>13.1e}")
    ratios = []
    for size, prompts in dict.fromkeys((r["size"], r["prompts"]) for r in rows):
        ours, theirs = key[(size, prompts, "ours")], key[(size, prompts, "trl")]
        throughput = paired_ratio(theirs["step_seconds_all"], ours["step_seconds_all"])  # same tokens per step
        peak_field = "cuda_peak_mib" if cuda else "peak_rss_mib"
        memory = ours[peak_field] / theirs[peak_field]
        ratios.append({"size": size, "prompts": prompts, "throughput_ours_over_trl": throughput,
                       "throughput_ours_over_trl_of_medians": ours["response_tokens_per_second"]
                       / theirs["response_tokens_per_second"],
                       "peak_memory_ours_over_trl": memory, "meets_throughput_target": throughput >= 1.0})
        print(f"{size} B={prompts}: throughput ours/TRL = {throughput:.2f} "
              f"({'meets' if throughput >= 1.0 else 'misses'} ≥ 1.0; median of per-step ratios), "
              f"peak memory ours/TRL = {memory:.2f}")
    memory = ("torch.cuda.max_memory_allocated over the measured steps" if cuda else
              "VmHWM (reset after setup + warm-up) minus RSS after imports; step Δ: minus RSS before the steps")
    out = {"benchmark": "bench_trl", "machine": info, "memory_measure": memory,
           "settings": {**common, "quick": args.quick, "model_size": args.model_size, "prompts": args.prompts,
                        "beta": BETA, "learning_rate": LEARNING_RATE},
           "ratios": ratios, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    raise SystemExit(main())
