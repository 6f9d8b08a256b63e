"""Data pipeline throughput: convert (read + validate + build the Dataset) and tokenise listwise records.

Generates N records (k responses, m dimensions, 20-60-word prompts, 30-90-word responses) as native listwise
JSONL, loads them with ``load_listwise`` and tokenises them with the GPT-2 tokenizer in ``tests/data`` and the
default chat template. Prints a table; writes ``benchmarks/results/bench_data.json``.

    .venv/bin/python benchmarks/bench_data.py [--records 10000] [--k 4] [--dimensions 4] [--max-length 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the model answers each question with care and the reviewer scores how helpful honest and clear "
    "every response is before the next prompt arrives in a long queue of tasks"
).split()


def sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def write_records(path: Path, n: int, k: int, m: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    dimensions = [f"dim{d}" for d in range(m)]
    with open(path, "w") as f:
        for i in range(n):
            record = {
                "id": f"r{i}",
                "prompt": sentence(rng, rng.randint(20, 60)),
                "responses": [sentence(rng, rng.randint(30, 90)) for _ in range(k)],
                "scores": {d: [rng.choice([1, 2, 3, 4, 5, None]) for _ in range(k)] for d in dimensions},
            }
            f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--dimensions", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_data.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from lambda_dpo.data import ensure_chat_template, load_listwise, tokenize_listwise, truncation_summary

    tokenizer = ensure_chat_template(
        AutoTokenizer.from_pretrained(REPO / "tests" / "data" / "gpt2_tokenizer")
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        write_records(data, args.records, args.k, args.dimensions)
        start, cpu = time.perf_counter(), time.process_time()
        dataset = load_listwise(data, keep_in_memory=True)
        convert_s, convert_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        tokenized = tokenize_listwise(dataset, tokenizer, max_length=args.max_length)
        tokenize_s, tokenize_cpu = time.perf_counter() - start, time.process_time() - cpu
        summary = truncation_summary(tokenized)

    result = {
        "records": args.records,
        "k": args.k,
        "dimensions": args.dimensions,
        "max_length": args.max_length,
        "convert_s": round(convert_s, 3),
        "convert_cpu_s": round(convert_cpu, 3),
        "convert_records_per_s": round(args.records / convert_s, 1),
        "tokenize_s": round(tokenize_s, 3),
        "tokenize_cpu_s": round(tokenize_cpu, 3),
        "tokenize_records_per_s": round(args.records / tokenize_s, 1),
        "total_s": round(convert_s + tokenize_s, 3),
        "total_cpu_s": round(convert_cpu + tokenize_cpu, 3),
        "truncation": summary,
        # Wall time depends on what else runs on the machine: keep the load next to it.
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version(),
        },
    }
    print(f"{'stage':<10}{'seconds':>10}{'cpu s':>10}{'records/s':>12}")
    print(f"{'convert':<10}{convert_s:>10.2f}{convert_cpu:>10.2f}{result['convert_records_per_s']:>12.0f}")
    print(
        f"{'tokenise':<10}{tokenize_s:>10.2f}{tokenize_cpu:>10.2f}{result['tokenize_records_per_s']:>12.0f}"
    )
    print(f"{'total':<10}{convert_s + tokenize_s:>10.2f}{convert_cpu + tokenize_cpu:>10.2f}")
    print(f"load average {result['machine']['load_avg_1m']:.1f} on {os.cpu_count()} cores")
    print(f"truncation: {summary}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(partial, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
