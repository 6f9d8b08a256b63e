"""Peak memory and time of per-sequence log-probs: chunked + checkpointed (lambda_dpo.logprobs) vs full log-softmax.

A 2-layer Llama with a Qwen-sized vocabulary (151,936), N sequences × T tokens, forward + backward of the
mean-reduced response log-prob. Each variant runs in its own subprocess, so allocator caches of one variant do not
hide or inflate the next one's memory.

Memory, what is measured:
- CPU: resident set size (psutil RSS) sampled every millisecond by a thread, peak minus the RSS just before the
  first step (model, optimizer-free grads and inputs already built). Also the kernel's high-water mark
  (getrusage ru_maxrss) minus the same baseline, which cannot miss a short peak but also counts setup.
- CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the first step.

    python benchmarks/bench_logprobs.py                  # CPU, defaults below
    python benchmarks/bench_logprobs.py --device cuda    # the same on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_logprobs.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8, help="N")
    parser.add_argument("--length", type=int, default=256, help="T, tokens per sequence")
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt tokens; the rest are response tokens")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one variant and print JSON
    return parser.parse_args(argv)


class RssSampler(threading.Thread):
    """Peak resident set size of this process, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.001):
        import psutil

        super().__init__(daemon=True)
        self.process, self.interval, self.peak, self.running = psutil.Process(), interval, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def worker(args: argparse.Namespace) -> dict:
    """Build the model and batch, run ``warmup + repeats`` forward+backward steps of one variant, measure."""
    import gc

    import psutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lambda_dpo.logprobs import sequence_logps

    torch.manual_seed(0)
    device = torch.device(args.device)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8)
    model = LlamaForCausalLM(config).to(device).train()
    input_ids = torch.randint(0, args.vocab, (args.sequences, args.length), device=device)
    attention_mask = torch.ones_like(input_ids)
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, args.prompt_length :] = True

    def full_logsoftmax():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        token_logps = logits.log_softmax(-1)[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        mask = response_mask[:, 1:]
        return (token_logps * mask).sum(1) / mask.sum(1)

    def chunked():
        return sequence_logps(model, input_ids, attention_mask, response_mask, reduction="mean",
                              chunk_size=int(args.worker.split("-")[1])).logps

    step = full_logsoftmax if args.worker == "full" else chunked
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    baseline_rss = psutil.Process().memory_info().rss
    sampler = RssSampler()
    sampler.start()
    times = []
    for i in range(args.warmup + args.repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        logps = step()
        logps.sum().backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_rss = sampler.stop()
    result = {
        "variant": args.worker,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "step_seconds": sorted(times)[len(times) // 2],
        "step_seconds_all": times,
        "logps": logps.detach().float().cpu().tolist(),
    }
    if cuda:
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - baseline) / 2**20
        result["memory_measure"] = "torch.cuda.max_memory_allocated - allocated before"
    else:
        result["peak_mib"] = (peak_rss - baseline_rss) / 2**20
        result["peak_mib_ru_maxrss"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss) / 2**20
        result["memory_measure"] = "psutil RSS sampled every 1 ms, peak - RSS before the first step"
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    variants = ["full"] + [f"chunked-{size}" for size in args.chunk_sizes]
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
    results = []
    for variant in variants:
        command = [sys.executable, __file__, *forwarded, "--worker", variant]
        completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
        if completed.returncode != 0:
            print(completed.stderr, file=sys.stderr)
            raise SystemExit(f"variant {variant} failed (exit {completed.returncode}); its stderr is above")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    reference = results[0]
    print(f"vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, N={args.sequences} x T={args.length} "
          f"(prompt {args.prompt_length}), mean reduction, forward+backward, device {args.device}")
    print(f"memory: {reference['memory_measure']}")
    print(f"{'variant':<16}{'peak MiB':>10}{'vs full':>9}{'step s':>9}{'max |Δℓ| vs full':>19}")
    for r in results:
        r["peak_reduction_vs_full"] = reference["peak_mib"] / r["peak_mib"]
        r["max_abs_logp_diff_vs_full"] = max(abs(a - b) for a, b in zip(r["logps"], reference["logps"]))
        print(f"{r['variant']:<16}{r['peak_mib']:>10.0f}{r['peak_reduction_vs_full']:>8.2f}x"
              f"{r['step_seconds']:>9.2f}{r['max_abs_logp_diff_vs_full']:>19.2e}")
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpu_count": os.cpu_count()},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
