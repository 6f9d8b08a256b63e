"""Training step time and peak memory of λ-DPO against the bare-model floor (issue 4's measurement).

Same tokens for every variant: B prompts × k responses, each sequence a λ-conditioned prompt of P tokens plus a
response of R tokens (P + R = max_length), m preference dimensions, random-init models, random token ids.

    (a) ours, reference precomputed   LambdaDPOTrainer step; the batch carries the reference_logps column
    (b) ours, reference every step    LambdaDPOTrainer with precompute_reference=False and a frozen reference
                                      (with --lora: the base model, adapters disabled)
    (c) floor                         a plain transformers.Trainer step on the same B·k sequences with the model's
                                      own loss (labels = input_ids): the least any trainer must spend
    (l) ours, λ-adapters              (a) with conditioning: lora (rank 8 per dimension on every linear layer); its
                                      prompts carry no λ line, so it forwards a few tokens fewer than (a)

A step is the body of Trainer's inner loop: ``trainer.training_step`` (forward, loss, backward), gradient clipping,
AdamW step, scheduler step, zero_grad. Batches are collated before timing, so no dataset work is timed; what (a)
and (b) do per step beyond the floor is timed on purpose: sampling λ, tokenising the λ-conditioned prompts (the
λ-render column times that part alone), chunked log-probs, the loss and its metrics.

Time: all variants live in one process and their steps are interleaved (order rotated every step), so background
load on a shared machine hits them alike; s/step is the median over the timed steps. Ratios are the numbers to read.
Memory: each variant runs again in its own subprocess. CPU: peak RSS during the measured steps (the kernel's VmHWM,
reset through /proc/self/clear_refs once setup and one warm-up step are done, so it cannot miss a short peak)
minus the RSS right after imports: models, gradients, AdamW state and activations. "step Δ" is the same peak minus
the RSS just before the measured steps. CUDA: torch.cuda.max_memory_allocated over the same steps.

    .venv/bin/python benchmarks/bench_train.py                    # 7M and 30M Llama, 1 and 4 prompts, CPU
    .venv/bin/python benchmarks/bench_train.py --quick            # smoke run (7M, short sequences, 2 steps)
    .venv/bin/python benchmarks/bench_train.py --device cuda --model-size 1.5b --lora --max-length 1024
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_train.json"
SPECIAL_TOKENS = ["<unk>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# Random-init shapes (tied input/output embeddings); exact parameter counts are printed with the results.
MODEL_SIZES = {
    "7m": dict(arch="llama", vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
               num_attention_heads=4, num_key_value_heads=2),
    "30m": dict(arch="llama", vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=4),
    # Qwen2-1.5B's shape: GQA with 2 KV heads, a 151,936-token vocabulary
    "1.5b": dict(arch="qwen2", vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2),
}
VARIANTS = {"a": "ours, ref precomputed", "b": "ours, ref every step", "c": "floor: own loss",
            "l": "ours, λ-adapters"}
LEARNING_RATE = 1e-5


# ---------------------------------------------------------------- shared with bench_trl.py
def word_tokenizer(vocab_size: int):
    """A word-level tokenizer in which word ``t<i>`` is token ``i``: random ids are random text, and every text has
    a known token count. Chat-template markers and EOS are special tokens; any other word (e.g. of the λ line) is
    ``<unk>``. Gets lambda-dpo's default chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lambda_dpo.data import ensure_chat_template

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>",
                                        pad_token="</s>")
    return ensure_chat_template(tokenizer)


def random_words(generator, n: int, vocab_size: int) -> str:
    """``n`` random word tokens (never a special token)."""
    import torch

    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (n,), generator=generator)
    return " ".join(f"t{i}" for i in ids.tolist())


def build_model(size: str, seed: int, dtype: str, device: str, lora: bool):
    """Random-init causal LM of ``MODEL_SIZES[size]`` on ``device``; wrapped in LoRA (r=16, all linear) if ``lora``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(MODEL_SIZES[size])
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[shape.pop("arch")]
    config = config_class(**shape, tie_word_embeddings=True, max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 1.5B model is not built on the CPU first
        model = model_class(config).to(getattr(torch, dtype))
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    return model


def count_parameters(size: str) -> int:
    """Parameters of ``MODEL_SIZES[size]``, counted on the meta device (nothing allocated)."""
    return sum(p.numel() for p in build_model(size, 0, "float32", "meta", lora=False).parameters())


def prepare_manual_steps(trainer, total_steps: int) -> None:
    """What `Trainer.train` sets up before its loop, for driving `train_step` by hand."""
    trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
    trainer.current_gradient_accumulation_steps = 1


def train_step(trainer, batch) -> tuple[float, float]:
    """One optimisation step as Trainer's inner loop runs it; returns (seconds, loss)."""
    import torch

    model, cuda = trainer.model, trainer.args.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = trainer.training_step(model, batch)
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    model.zero_grad()
    loss = loss.item()  # Trainer's loop reads the loss every step too (NaN check), which syncs the device
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, loss


def interleaved_times(variants: dict, warmup: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """Run ``warmup`` then ``steps`` steps of every variant, interleaved, order rotated each step.

    ``variants``: name → (trainer, batches); step s uses ``batches[s % len(batches)]``.
    Returns name → {"seconds": [steps], "losses": [warmup + steps]}.
    """
    names = list(variants)
    out = {name: {"seconds": [], "losses": []} for name in names}
    for step in range(warmup + steps):
        shift = step % len(names)
        for name in names[shift:] + names[:shift]:
            trainer, batches = variants[name]
            seconds, loss = train_step(trainer, batches[step % len(batches)])
            out[name]["losses"].append(loss)
            if step >= warmup:
                out[name]["seconds"].append(seconds)
    return out


def rss_bytes(field: str = "VmRSS") -> int:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def memory_over_steps(trainer, batches, warmup: int, steps: int, baseline_rss: int) -> dict:
    """Peak memory of ``steps`` steps after ``warmup`` steps (see the module docstring for what is counted)."""
    import torch

    for step in range(warmup):
        train_step(trainer, batches[step % len(batches)])
    cuda = trainer.args.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    before = rss_bytes()
    for step in range(warmup, warmup + steps):
        train_step(trainer, batches[step % len(batches)])
    peak = rss_bytes("VmHWM")
    mib = 2**20
    result = {"peak_rss_mib": (peak - baseline_rss) / mib, "step_rss_mib": (peak - before) / mib}
    if cuda:
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / mib
        result["cuda_step_mib"] = (torch.cuda.max_memory_allocated() - cuda_before) / mib
    return result


def machine_info(device: str, threads: int) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            found = re.search(r"model name\s*:\s*(.+)", f.read())
        cpu = found.group(1).strip() if found else cpu
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": device,
            "load_average_1min_at_end": os.getloadavg()[0]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_worker(script: str, spec: dict) -> dict:
    """Run ``script --worker <spec>`` in a fresh interpreter and return the JSON it prints last."""
    completed = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True,
                               text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-6000:])
        raise SystemExit(f"worker {spec.get('mode')} {spec.get('variant', '')} of {spec.get('size')} failed "
                         f"(exit {completed.returncode}); its stderr is above")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over steps of step-time ratios: steps of the same round ran under the same background load."""
    return median([a / b for a, b in zip(numerator, denominator)])


# ---------------------------------------------------------------- this benchmark's setting
def dimension_names(m: int) -> list[str]:
    return [f"dim{d}" for d in range(m)]


def conditioned_prompt(tokenizer, row: dict, dimensions: list[str], lambdas, max_prompt_tokens: int) -> list[int]:
    """The prompt token ids the λ-DPO policy sees for ``row`` under ``lambdas`` (λ line in the system message)."""
    from lambda_dpo.conditioning import render_lambda, with_conditioning
    from lambda_dpo.data import encode_prompt

    system = with_conditioning(row.get("system") or "", render_lambda(lambdas, dimensions))
    return encode_prompt(tokenizer, row["prompt"], system, max_prompt_tokens=max_prompt_tokens)


def write_records(path: Path, tokenizer, spec: dict) -> None:
    """``2·B`` listwise records of random words sized so that every λ-conditioned prompt is exactly
    ``prompt_tokens`` and every response ``response_tokens`` long (its EOS included)."""
    import torch

    dims = dimension_names(spec["m"])
    uniform = [1 / len(dims)] * len(dims)
    overhead = len(conditioned_prompt(tokenizer, {"prompt": [{"role": "user", "content": ""}]}, dims, uniform,
                                      None))
    prompt_words = spec["prompt_tokens"] - overhead
    if prompt_words < 1:
        raise SystemExit(f"--max-length {spec['max_length']} leaves {spec['prompt_tokens']} prompt tokens, fewer "
                         f"than the chat template and λ line take ({overhead + 1}); raise --max-length")
    generator = torch.Generator().manual_seed(0)
    vocab = MODEL_SIZES[spec["size"]]["vocab_size"]
    with open(path, "w") as f:
        for i in range(2 * spec["prompts"]):
            record = {
                "id": f"r{i}",
                "prompt": random_words(generator, prompt_words, vocab),
                "responses": [random_words(generator, spec["response_tokens"] - 1, vocab) for _ in range(spec["k"])],
                "scores": {d: torch.randint(1, 6, (spec["k"],), generator=generator).tolist() for d in dims},
            }
            f.write(json.dumps(record) + "\n")


def lambda_trainer(spec: dict, tokenizer, data, workdir: Path, precompute: bool, conditioning: str = "text",
                   prefix_sharing: str = "auto"):
    """LambdaDPOTrainer for variant (a) (``precompute``), (b) or (l) (``conditioning="lora"``), with a fresh policy
    (seed 0) and reference; ``prefix_sharing`` as the config field (benchmarks/bench_prefix.py sets it)."""
    from lambda_dpo.trainer import LambdaDPOConfig, LambdaDPOTrainer

    lora = spec["lora"]
    args = LambdaDPOConfig(
        output_dir=str(workdir / f"out-{precompute}-{conditioning}"), reference_cache_dir=str(workdir / "cache"),
        per_device_train_batch_size=spec["prompts"], per_device_eval_batch_size=spec["prompts"] * spec["k"],
        max_steps=spec["total_steps"], learning_rate=LEARNING_RATE, dimensions=dimension_names(spec["m"]),
        max_length=spec["max_length"], max_prompt_length=spec["prompt_tokens"], lambda_schedule="uniform",
        precompute_reference=precompute, reference="adapter-disabled" if lora else "model", use_lora=lora,
        use_cpu=spec["device"] == "cpu", report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=0, conditioning=conditioning, prefix_sharing=prefix_sharing,
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
    )
    policy = build_model(spec["size"], 0, spec["dtype"], spec["device"], lora)
    reference = None if lora else build_model(spec["size"], 1, spec["dtype"], spec["device"], False)
    trainer = LambdaDPOTrainer(policy, args, train_dataset=data, processing_class=tokenizer, ref_model=reference)
    for row in trainer.train_dataset:
        lengths = {len(r) for r in row["response_input_ids"]}
        if lengths != {spec["response_tokens"]}:
            raise AssertionError(f"record {row['id']}: response lengths {lengths}, expected {spec['response_tokens']}")
    return trainer


def floor_trainer(spec: dict, tokenizer, lambda_dataset, workdir: Path):
    """Plain transformers.Trainer on the B·k sequences (conditioned prompt + response) of ``lambda_dataset``."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    dims = dimension_names(spec["m"])
    sequences = []
    for row in lambda_dataset:
        prompt = conditioned_prompt(tokenizer, row, dims, [1 / len(dims)] * len(dims), spec["prompt_tokens"])
        if len(prompt) != spec["prompt_tokens"]:
            raise AssertionError(f"conditioned prompt has {len(prompt)} tokens, expected {spec['prompt_tokens']}")
        sequences += [prompt + response for response in row["response_input_ids"]]
    data = Dataset.from_dict({"input_ids": sequences, "labels": sequences,
                              "attention_mask": [[1] * len(s) for s in sequences]})
    args = TrainingArguments(
        output_dir=str(workdir / "out-floor"), per_device_train_batch_size=spec["prompts"] * spec["k"],
        max_steps=spec["total_steps"], learning_rate=LEARNING_RATE, use_cpu=spec["device"] == "cpu",
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
    )
    policy = build_model(spec["size"], 0, spec["dtype"], spec["device"], spec["lora"])
    return Trainer(policy, args, train_dataset=data, data_collator=default_data_collator)


def fixed_batches(trainer, per_batch: int) -> list:
    """The trainer's own collator over consecutive rows: collated once, before any timing."""
    dataset = trainer.train_dataset
    return [trainer.data_collator([dataset[i] for i in range(start, start + per_batch)])
            for start in range(0, len(dataset), per_batch)]


def build_variant(name: str, spec: dict, tokenizer, data, workdir: Path):
    """(trainer, batches) of variant ``name``, ready for `train_step`."""
    import gc

    from lambda_dpo.data import tokenize_listwise

    if name == "c":
        tokenized = tokenize_listwise(data, tokenizer, max_length=spec["max_length"],
                                      max_prompt_length=spec["prompt_tokens"])
        trainer = floor_trainer(spec, tokenizer, tokenized, workdir)
        batches = fixed_batches(trainer, spec["prompts"] * spec["k"])
    else:
        trainer = lambda_trainer(spec, tokenizer, data, workdir, precompute=name in "al",
                                 conditioning="lora" if name == "l" else "text")
        batches = fixed_batches(trainer, spec["prompts"])
    gc.collect()
    prepare_manual_steps(trainer, spec["total_steps"])
    return trainer, batches


def worker(spec: dict) -> dict:
    """Build the variants of one setting and time them interleaved ("time") or measure one's memory ("memory")."""
    import torch

    import lambda_dpo.trainer  # noqa: F401  (imports transformers' Trainer, accelerate, datasets)
    from lambda_dpo.data import load_listwise

    if spec["lora"]:
        import peft  # noqa: F401
    torch.set_num_threads(spec["threads"])
    baseline_rss = rss_bytes()  # everything imported: the memory columns count what the run itself allocates
    torch.manual_seed(0)
    tokenizer = word_tokenizer(MODEL_SIZES[spec["size"]]["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_records(workdir / "train.jsonl", tokenizer, spec)
        data = load_listwise(str(workdir / "train.jsonl"), keep_in_memory=True)
        if spec["mode"] == "memory":
            trainer, batches = build_variant(spec["variant"], spec, tokenizer, data, workdir)
            return memory_over_steps(trainer, batches, spec["warmup"], spec["memory_steps"], baseline_rss)
        variants = {name: build_variant(name, spec, tokenizer, data, workdir) for name in spec["variants"]}
        result = interleaved_times(variants, spec["warmup"], spec["steps"])
        # The λ-conditioned prompt tokenisation alone, as (a)'s step does it for its B rows
        rows = [variants["a"][0].train_dataset[i] for i in range(spec["prompts"])]
        dims = dimension_names(spec["m"])
        render = []
        for _ in range(spec["steps"]):
            lambdas = torch.distributions.Dirichlet(torch.ones(len(dims))).sample((len(rows),))
            start = time.perf_counter()
            for row, lam in zip(rows, lambdas):
                conditioned_prompt(tokenizer, row, dims, lam, spec["prompt_tokens"])
            render.append(time.perf_counter() - start)
        result["a"]["render_seconds"] = render
        return result


# ---------------------------------------------------------------- driver
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--model-size", nargs="+", choices=list(MODEL_SIZES), default=["7m", "30m"])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4], help="B, prompts per step (one setting each)")
    parser.add_argument("--k", type=int, default=4, help="responses per prompt")
    parser.add_argument("--m", type=int, default=4, help="preference dimensions")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence: prompt + response")
    parser.add_argument("--prompt-length", type=int, help="λ-conditioned prompt tokens (default max_length // 4)")
    tuning = parser.add_mutually_exclusive_group()
    tuning.add_argument("--lora", action="store_true", help="train LoRA adapters (r=16, all linear layers)")
    tuning.add_argument("--full", action="store_true", help="train all weights (the default)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="model weights (default: fp32 on CPU, "
                        "bf16 on CUDA)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each decoder layer in backward (every variant, the floor included)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--memory-steps", type=int, default=1, help="steps measured in each memory subprocess")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 7m, B=1, max_length 128, 2 timed steps")
    parser.add_argument("--force", action="store_true", help="run a setting even if it looks too big for the device")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: a JSON spec, run by run_worker
    args = parser.parse_args(argv)
    if args.quick:
        args.model_size, args.prompts, args.max_length, args.steps = ["7m"], [1], 128, 2
        if args.output == RESULTS:
            args.output = Path(tempfile.gettempdir()) / "bench_train_quick.json"  # a smoke run, not a result
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def too_big_for_cpu(size: str, args) -> str | None:
    """A reason not to run ``size`` on this CPU (memory or time), or None."""
    import psutil
    import torch

    params = count_parameters(size)
    torch.set_num_threads(args.threads)
    bytes_per_param = 2 if args.dtype == "bfloat16" else 4
    # weights, plus gradients and two AdamW moments per trained weight (LoRA trains ~1%), plus (b)'s reference
    resident = params * bytes_per_param * (1 if args.lora else 5) / 2**30
    tokens = max(args.prompts) * args.k * args.max_length
    a = torch.randn(1024, 1024)
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    flops_per_second = 10 * 2 * 1024**3 / (time.perf_counter() - start)
    # forward + backward ≈ 6 FLOPs per parameter and token (4 with frozen weights under LoRA)
    minutes = (4 if args.lora else 6) * params * tokens / flops_per_second / 60
    available = psutil.virtual_memory().available / 2**30
    if resident > 0.8 * available or minutes > 5:
        return (f"{size}: {params / 1e9:.2f}B parameters need ~{resident:.0f} GiB resident ({available:.0f} GiB "
                f"available) and ~{minutes:.0f} min per step at this CPU's {flops_per_second / 1e9:.0f} GFLOP/s; "
                "run it on a GPU (--device cuda) or pass --force")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.device == "cpu":
        for size in args.model_size:
            reason = too_big_for_cpu(size, args)
            if reason and not args.force:
                print(f"skipped: {reason}")
                args.model_size = [s for s in args.model_size if s != size]
        if not args.model_size:
            return 2
    load_at_start = os.getloadavg()[0]
    prompt_tokens = args.prompt_length or args.max_length // 4
    common = dict(device=args.device, k=args.k, m=args.m, max_length=args.max_length, prompt_tokens=prompt_tokens,
                  response_tokens=args.max_length - prompt_tokens, lora=args.lora, dtype=args.dtype, threads=args.threads,
                  warmup=args.warmup, steps=args.steps, memory_steps=args.memory_steps,
                  total_steps=args.warmup + max(args.steps, args.memory_steps),
                  gradient_checkpointing=args.gradient_checkpointing)
    rows = []
    for size in args.model_size:
        params = count_parameters(size)
        for prompts in args.prompts:
            # λ-adapters are themselves low-rank adapters: not combined with peft LoRA (--lora)
            spec = dict(common, size=size, prompts=prompts, variants=[v for v in VARIANTS if not (args.lora and v == "l")])
            print(f"running {size} B={prompts} …", file=sys.stderr, flush=True)
            times = run_worker(__file__, dict(spec, mode="time"))
            for name in spec["variants"]:
                memory = run_worker(__file__, dict(spec, mode="memory", variant=name))
                seconds = median(times[name]["seconds"])
                rows.append({"size": size, "parameters": params, "prompts": prompts, "variant": name,
                             "variant_name": VARIANTS[name], "step_seconds": seconds,
                             "step_seconds_all": times[name]["seconds"], "losses": times[name]["losses"],
                             "prompts_per_second": prompts / seconds,
                             "response_tokens_per_second": prompts * args.k * common["response_tokens"] / seconds,
                             "render_seconds": median(times[name].get("render_seconds", [0.0])), **memory})
    report(rows, args, common, load_at_start)
    return 0


def report(rows: list[dict], args, common: dict, load_at_start: float) -> None:
    by_key = {(r["size"], r["prompts"], r["variant"]): r for r in rows}
    for r in rows:
        key = (r["size"], r["prompts"])
        r["time_vs_floor"] = r["step_seconds"] / by_key[(*key, "c")]["step_seconds"]
        r["peak_vs_floor"] = r["peak_rss_mib"] / by_key[(*key, "c")]["peak_rss_mib"]
    cuda = args.device.startswith("cuda")
    info = machine_info(args.device, args.threads) | {"load_average_1min_at_start": load_at_start}
    print(f"\n{info['date']}  {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads)"
          f"{'  ' + info['gpu'] if cuda else ''}  torch {info['torch']}  device {args.device}  {args.dtype}"
          f"{'  LoRA' if args.lora else ''}{'  gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"k={args.k} responses, m={args.m} dimensions, {common['prompt_tokens']} prompt + "
          f"{common['response_tokens']} response tokens; median of {args.steps} interleaved steps after "
          f"{args.warmup} warm-up")
    memory_column = "CUDA peak MiB" if cuda else "peak RSS MiB"
    print(f"{'model':<14}{'B':>3} {'variant':<24}{'s/step':>8}{'× floor':>9}{'prompts/s':>11}{'resp tok/s':>12}"
          f"{memory_column:>15}{'step Δ MiB':>12}{'λ-render ms':>13}")
    for r in rows:
        peak = r["cuda_peak_mib"] if cuda else r["peak_rss_mib"]
        step = r["cuda_step_mib"] if cuda else r["step_rss_mib"]
        render = f"{1000 * r['render_seconds']:.1f}" if r["variant"] == "a" else ""
        print(f"{r['size'] + ' (' + format(r['parameters'] / 1e6, '.1f') + 'M)':<14}{r['prompts']:>3} "
              f"({r['variant']}) {r['variant_name']:<20}{r['step_seconds']:>8.3f}{r['time_vs_floor']:>9.2f}"
              f"{r['prompts_per_second']:>11.2f}{r['response_tokens_per_second']:>12.0f}{peak:>15.0f}{step:>12.0f}"
              f"{render:>13}")
    ratios = []
    for size, prompts in dict.fromkeys((r["size"], r["prompts"]) for r in rows):
        a, b, c, lora = (by_key.get((size, prompts, v)) for v in "abcl")
        a_over_c = paired_ratio(a["step_seconds_all"], c["step_seconds_all"])
        l_over_a = paired_ratio(lora["step_seconds_all"], a["step_seconds_all"]) if lora else None
        b_over_a = paired_ratio(b["step_seconds_all"], a["step_seconds_all"])
        ratios.append({"size": size, "prompts": prompts, "a_over_c": a_over_c, "b_over_a": b_over_a,
                       "a_over_c_of_medians": a["step_seconds"] / c["step_seconds"],
                       "b_over_a_of_medians": b["step_seconds"] / a["step_seconds"],
                       "meets_a_over_c_target": a_over_c <= 1.10, "l_over_a": l_over_a})
        print(f"{size} B={prompts}: (a)/(c) = {a_over_c:.2f} ({'meets' if a_over_c <= 1.10 else 'misses'} ≤ 1.10), "
              f"(b)/(a) = {b_over_a:.2f}" + (f", (l)/(a) = {l_over_a:.2f}" if lora else "")
              + "   (median of per-step ratios)")
    memory = ("torch.cuda.max_memory_allocated over the measured steps" if cuda else
              "VmHWM (reset after setup + warm-up) minus RSS after imports; step Δ: minus RSS before the steps")
    out = {"benchmark": "bench_train", "machine": info, "memory_measure": memory,
           "settings": {**common, "quick": args.quick, "model_size": args.model_size, "prompts": args.prompts},
           "ratios": ratios, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    raise SystemExit(main())
