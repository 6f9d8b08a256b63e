"""Training speed with 1 and 2 torch CPU threads, on a quiet machine and with another busy process beside it.

The same short λ-DPO run (the demo's world and 0.73 M-parameter Llama, conditioning: lora, batch 8) runs in a fresh
subprocess per setting; "loaded" starts one busy-looping process next to it for the whole run (another job on a
shared machine). Settings are interleaved over repeats so that drift in the machine's speed hits them alike; the
table gives the median seconds per step of the timed steps (after a warm-up) and the ratio to 1 thread.

    python benchmarks/bench_threads.py              # 1 and 2 threads × quiet and loaded, 2 repeats
    python benchmarks/bench_threads.py --steps 20 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_threads.json")


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def worker(threads: int, steps: int, warmup: int) -> list[float]:
    """Seconds of each training step after ``warmup`` steps, with ``threads`` torch threads."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from lambda_dpo.demo.pipeline import DemoSettings, prepare
    from lambda_dpo.trainer import LambdaDPOConfig, LambdaDPOTrainer

    torch.set_num_threads(threads)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        s = DemoSettings(num_train=(steps + warmup) * 8, sft_steps=1, num_heldout=4)
        train, _, tokenizer, sft_dir, _ = prepare(out, s)
        args = LambdaDPOConfig(
            output_dir=os.path.join(out, "run"), max_steps=steps + warmup, per_device_train_batch_size=8,
            learning_rate=1e-3, beta=1.0, tau=0.05, tau_scale="range", logprob_reduction="sum", nll_weight=3.0,
            conditioning="lora", lambda_schedule="unimodal", max_length=160, max_prompt_length=64, use_cpu=True,
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
            reference_model=sft_dir, dataloader_num_workers=0,
        )
        trainer = LambdaDPOTrainer(AutoModelForCausalLM.from_pretrained(sft_dir), args, train_dataset=train,
                                   processing_class=tokenizer, callbacks=[Timer()])
        trainer.train()
    return times[warmup:]


def run_setting(threads: int, loaded: bool, steps: int, warmup: int) -> list[float]:
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True) if loaded else None
    if spinner:
        spinner.start()
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps([threads, steps, warmup])],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    finally:
        if spinner:
            stop.set()
            spinner.join()
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*json.loads(args.worker))))
        return 0
    settings = [(threads, loaded) for loaded in (False, True) for threads in (1, 2)]
    times: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    for repeat in range(args.repeats):
        for threads, loaded in settings[repeat % 2:] + settings[:repeat % 2]:  # rotate the order per repeat
            print(f"repeat {repeat + 1}: {threads} thread(s), {'loaded' if loaded else 'quiet'} …", file=sys.stderr)
            times[(threads, loaded)] += run_setting(threads, loaded, args.steps, args.warmup)
    rows = []
    print(f"\n{time.strftime('%Y-%m-%d')}  {os.cpu_count()} cores; median s/step over {args.repeats} × {args.steps} "
          "steps (demo model, batch 8, conditioning: lora)")
    print(f"{'machine':<8}{'threads':>8}{'s/step':>9}{'× 1 thread':>12}")
    for threads, loaded in settings:
        median = statistics.median(times[(threads, loaded)])
        base = statistics.median(times[(1, loaded)])
        rows.append({"threads": threads, "loaded": loaded, "median_step_seconds": median,
                     "vs_one_thread": median / base, "step_seconds": times[(threads, loaded)]})
        print(f"{'loaded' if loaded else 'quiet':<8}{threads:>8}{median:>9.3f}{median / base:>12.2f}")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(f"{args.output}.tmp", "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "settings": vars(args), "rows": rows},
                  f, indent=2)
    os.replace(f"{args.output}.tmp", args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
