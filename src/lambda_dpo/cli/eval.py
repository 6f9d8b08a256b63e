"""`lambda-dpo eval`: evaluate a trained model (docs/spec.md §4) and write ``eval.json``, ``eval.md`` and PNG plots.

    lambda-dpo eval --model runs/x --data heldout.jsonl --scorer lambda_dpo.demo.world:scorer [--baseline runs/y]

Sections, each run when its inputs are there: ranking of the implicit reward on the held-out lists, KL to the
reference (sampled and on the held-out responses), length bias, controllability over a λ grid and win rates (with a
``--scorer``), lm-evaluation-harness benchmarks (``--lm-eval-tasks``), and the cost of the evaluation itself.
This module is the command line only: flags and their help, then :func:`lambda_dpo.evaluation.run.run_evaluation`
(the same evaluation as a Python function, configured by :class:`~lambda_dpo.evaluation.run.EvalConfig`, which
holds every default).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from lambda_dpo.evaluation.model_eval import MIXED
from lambda_dpo.evaluation.run import EvalConfig, run_evaluation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a model directory written by `lambda-dpo train`, or a plain Hugging Face model (an SFT or "
                             "TRL-trained model: it is evaluated unconditioned, with --reference)")
    parser.add_argument("--dimensions",
                        help="comma-separated dimensions to evaluate a plain model on (default: the held-out data's)")
    parser.add_argument("--data", required=True, help="held-out preference data (any format `lambda-dpo convert` reads)")
    parser.add_argument("--data-format", help="format of --data (default: detected)")
    parser.add_argument("--max-records", type=int, help="evaluate only the first N held-out lists")
    parser.add_argument("--baseline", help="a second model to put side by side (λ-DPO or plain HF dir)")
    parser.add_argument("--reference",
                        help="the reference π_ref (default: training.reference_model or model_name_or_path from "
                             "lambda_dpo.json; the base model with adapters disabled for a LoRA adapter dir)")
    parser.add_argument("--out", help="output folder (default: <model>/eval)")
    parser.add_argument("--lambda", dest="lambdas", action="append", metavar="NAME=W,…",
                        help="λ to evaluate at, e.g. helpfulness=0.7,honesty=0.3 (repeat; default: one-hot per dimension)")
    parser.add_argument("--normalize", action="store_true", help="rescale each --lambda to sum to 1")
    parser.add_argument("--ndcg-k", type=int, help="NDCG cut-off (default: the whole list)")
    parser.add_argument("--scorer", action="append", metavar="SPEC",
                        help="judge for controllability and win rates: module:function, file.py:function, a reward "
                             "model DIR, or name=DIR (one single-output reward model per dimension; repeat). A "
                             "file.py or module is imported: its top-level code runs, so name only code you trust")
    parser.add_argument("--scorer-dimensions",
                        help="comma-separated names of a multi-output reward model's outputs (default: id2label)")
    parser.add_argument("--grid", type=int, help="controllability λ grid step 1/N (0 = skip)")
    parser.add_argument("--num-prompts", type=int, help="held-out prompts used for generation")
    parser.add_argument("--num-samples", type=int,
                        help="responses per prompt and λ for controllability and win rates")
    parser.add_argument("--kl-samples", type=int, help="sampled responses per prompt for the KL (0 = skip)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="sampling temperature (not for the KL)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (not for the KL)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding for controllability and win rates")
    parser.add_argument("--batch-size", type=int, help="sequences per forward / generate call")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda, … (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    lm = parser.add_argument_group("lm-evaluation-harness (optional extra: pip install 'lambda-dpo[lm-eval]')")
    lm.add_argument("--lm-eval-tasks",
                    help="comma-separated tasks, e.g. mmlu,arc_challenge,hellaswag,truthfulqa_mc2,winogrande,gsm8k")
    lm.add_argument("--lm-eval-include-path", action="append", metavar="DIR",
                    help="folder of local task YAMLs (dataset_path: json + dataset_kwargs.data_files); repeatable. "
                         "Task YAMLs may import Python (!function): use only folders you trust")
    lm.add_argument("--lm-eval-lambda", help="λ of the system instruction (default: uniform)")
    lm.add_argument("--lm-eval-limit", type=float, help="examples per task (count, or fraction < 1)")
    lm.add_argument("--lm-eval-num-fewshot", type=int)
    lm.add_argument("--lm-eval-batch-size", type=int)
    lm.add_argument("--lm-eval-chat-template", action=argparse.BooleanOptionalAction,
                    help="render benchmark prompts with the chat template (the λ line as system message)")
    parser.set_defaults(**EvalConfig.defaults())


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.data import DataError
    from lambda_dpo.evaluation.lm_eval_bridge import LmEvalError
    from lambda_dpo.evaluation.report import write_report

    config = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)})
    try:
        results = run_evaluation(config)
    except (ValueError, OSError, LmEvalError, DataError) as error:
        print(f"lambda-dpo eval: {error}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.model, "eval")
    paths = write_report(results, out)
    print(f"wrote {paths['json']}, {paths['markdown']} and {len(results['plots'])} plots in {out}")
    for entry in results.get("ranking", []):
        accuracy = {m: entry["models"][m]["per_dimension"][MIXED]["ranking_accuracy"] for m in results["models"]}
        print("λ " + " ".join(f"{d}={w:.2f}" for d, w in entry["lambda"].items()) + ": ranking accuracy "
              + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items()))
    return 0
