#!/usr/bin/env bash
# The GPU measurement in one call (issue 18): a Qwen2-1.5B-shaped random-init model, bf16, k = 4, 1,024 tokens,
# gradient checkpointing on, SDPA attention (transformers' default), 2 prompts per step.
#   1. bench_train.py --lora   step time of λ-DPO (a, b) against a bare forward+backward (c), peak GPU memory
#   2. bench_train.py --full   the same with every weight trained
#   3. bench_trl.py            λ-DPO vs TRL DPOTrainer at k = 2, tokens/s and peak memory
# Writes benchmarks/results/gpu_check_{lora,full,trl}.json; each bench prints its table. About 6–8 minutes on one
# H100/H200-class GPU.
#
#   benchmarks/gpu_check.sh            # on the GPU machine
#   benchmarks/gpu_check.sh --dry      # on CPU: the same three commands on the 7M shape, 128 tokens, one step,
#                                      # results to a temporary folder (what tests/test_benchmarks.py runs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if [ "${1:-}" = "--dry" ]; then
    device=cpu size=7m length=128 steps=(--warmup 1 --steps 1) out=${GPU_CHECK_OUT:-$(mktemp -d)}
else
    device=cuda size=1.5b length=1024 steps=(--warmup 1 --steps 5) out=benchmarks/results
fi
common=(--device "$device" --model-size "$size" --prompts 2 --max-length "$length" --gradient-checkpointing "${steps[@]}")
set -x
"$PYTHON" benchmarks/bench_train.py "${common[@]}" --k 4 --lora --output "$out/gpu_check_lora.json"
"$PYTHON" benchmarks/bench_train.py "${common[@]}" --k 4 --full --output "$out/gpu_check_full.json"
"$PYTHON" benchmarks/bench_trl.py "${common[@]}" --output "$out/gpu_check_trl.json"
