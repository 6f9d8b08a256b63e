"""Benchmarks through lm-evaluation-harness (docs/spec.md §4): ``lm_eval.simple_evaluate`` on a trained model.

    results = run_lm_eval(model, tokenizer, ["arc_challenge", "gsm8k"],
                          system_instruction=lambda_system_instruction(metadata, {"helpfulness": 1.0}))

``lm-eval`` is an optional extra (``pip install 'lambda-dpo[lm-eval]'``), imported only when a benchmark runs.
A λ-conditioned model is evaluated with its λ line as the system instruction and the chat template applied, so it
sees the prompt the way it was trained to; ``apply_chat_template=False`` gives the raw few-shot text instead.

**Offline.** Built-in tasks (mmlu, arc_challenge, hellaswag, truthfulqa_mc2, winogrande, gsm8k, …) read their
data from the Hugging Face Hub. Without a network, write a local task YAML with ``dataset_path: json`` and
``dataset_kwargs: {data_files: {test: data.jsonl}}`` and pass its folder as ``include_path``
(``--lm-eval-include-path DIR``). Relative ``data_files`` are resolved against the YAML's own folder (lm-eval itself
would resolve them against the current directory), so a task folder works from anywhere.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lambda_dpo.conditioning import render_lambda

LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


class LmEvalError(RuntimeError):
    """lm-eval is missing, a task is unknown, or a task's data cannot be loaded."""


def lambda_system_instruction(metadata: Mapping[str, Any], lambdas: Mapping[str, float] | None) -> str | None:
    """The λ line a text-conditioned model sees in its system message (None for an unconditioned model, a
    λ-adapter model, which gets λ through its adapters, or no λ)."""
    from lambda_dpo.generation import text_conditioned

    if lambdas is None or not text_conditioned(metadata):
        return None
    return render_lambda(lambdas, metadata["dimensions"], metadata["conditioning_template"])


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise LmEvalError(
            f"lm-evaluation-harness is not installed ({error}); install the extra: pip install 'lambda-dpo[lm-eval]'"
        ) from None
    return lm_eval, HFLM, TaskManager


def _resolve_data_files(data_files, folder: Path):
    """``data_files`` (a path, a list, or ``{split: path | list}``) with relative local paths made absolute
    against ``folder`` when the file exists there."""
    if isinstance(data_files, Mapping):
        return {split: _resolve_data_files(files, folder) for split, files in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [_resolve_data_files(files, folder) for files in data_files]
    if isinstance(data_files, str) and "://" not in data_files and not os.path.isabs(data_files):
        candidate = folder / data_files
        return str(candidate) if candidate.exists() else data_files
    return data_files


def _task_config(task_manager, name: str) -> dict | None:
    """The full config of a YAML task (includes merged), or None for a group, a tag or a Python task."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is None or entry.yaml_path is None or entry.kind.name != "TASK":
        return None
    config = load_yaml(entry.yaml_path, resolve_func=True)
    return config if isinstance(config, dict) and "task" in config else None


def _task_spec(task_manager, name: str) -> tuple[str | dict, dict | None]:
    """What to hand ``TaskManager.load`` for ``name``: the name, or the YAML config with its relative
    ``data_files`` resolved against the YAML's folder; and the config (None if not a YAML task)."""
    config = _task_config(task_manager, name)
    if config is None:
        return name, None
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" not in kwargs:
        return name, config
    folder = Path(task_manager.task_index[name].yaml_path).parent
    resolved = {**config, "dataset_kwargs": {**kwargs, "data_files": _resolve_data_files(kwargs["data_files"], folder)}}
    return resolved, resolved


def _load_task(task_manager, name: str):
    spec, config = _task_spec(task_manager, name)
    try:
        loaded = task_manager.load([spec])
    except Exception as error:  # datasets / hub / YAML errors come in many types; all get the same advice
        dataset = (config or {}).get("dataset_path")
        where = f" (dataset_path={dataset!r})" if dataset else ""
        remote = dataset is None or (dataset not in LOCAL_BUILDERS and not os.path.isdir(str(dataset)))
        advice = (
            "its data comes from the Hugging Face Hub, which needs a network; offline, write a local task YAML "
            "(dataset_path: json, dataset_kwargs: {data_files: {test: data.jsonl}}) and pass its folder with "
            "--lm-eval-include-path DIR"
            if remote
            else "check the task YAML's dataset_kwargs.data_files (relative paths resolve against the YAML's folder)"
        )
        raise LmEvalError(
            f"lm-eval could not load task {name!r}{where}: {type(error).__name__}: {str(error)[:300]}; {advice}"
        ) from error
    return [*loaded["groups"].values()] or [*loaded["tasks"].values()]


def _task_manager(TaskManager, paths: list[str], tasks: Sequence[str]):
    """A TaskManager that knows ``tasks``: the local folders alone when they define them all (indexing lm-eval's
    ~15 k built-in YAMLs takes seconds), else local and built-in tasks."""
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(name in local.all_tasks for name in tasks):
            return local
    return TaskManager(include_path=paths or None)


def _check_names(task_manager, names: Sequence[str], include_path) -> None:
    known = set(task_manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = {n: difflib.get_close_matches(n, known, n=3) for n in unknown}
        where = f" (built-in tasks and {include_path})" if include_path else " (built-in tasks)"
        raise LmEvalError(
            f"unknown lm-eval task(s) {unknown}{where}; close matches: {hints}. Local tasks need "
            "--lm-eval-include-path DIR pointing at their YAML folder"
        )


def _metric_table(task_results: Mapping[str, Any]) -> dict[str, float | None]:
    """``{"acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": …}`` → ``{"acc": 0.5,
    "acc_stderr": 0.1, "exact_match/strict-match": …}`` (non-numeric values such as "N/A" → None)."""
    table = {}
    for key, value in task_results.items():
        if key in ("alias", "name", "sample_len", "sample_count") or "," not in key:
            continue
        metric, filter_name = key.split(",", 1)
        name = metric if filter_name == "none" else f"{metric}/{filter_name}"
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        table[name] = None if number is None or not math.isfinite(number) else float(number)
    return table


def run_lm_eval(
    model,
    tokenizer,
    tasks: Sequence[str],
    *,
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    system_instruction: str | None = None,
    apply_chat_template: bool = True,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    bootstrap_iters: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on an in-memory causal LM; returns ``{"tasks": {task: {metric: value}}, "groups":
    {group: {metric: value}}, "num_samples": {task: n}, "versions": {task: v}, "settings": {…}}``.

    Args:
        model, tokenizer: a ``transformers`` causal LM (adapters loaded or not) and its tokenizer, wrapped in
            lm-eval's ``HFLM``.
        tasks: task, group or tag names (``mmlu``, ``arc_challenge``, …, or those of ``include_path``).
        include_path: folder(s) of local task YAMLs.
        system_instruction: the system message (e.g. :func:`lambda_system_instruction`).
        apply_chat_template: render prompts with the tokenizer's chat template.
        num_fewshot: override the tasks' few-shot counts; limit: examples per task (a count, or a fraction < 1).
        bootstrap_iters: resamples for the standard error of non-mean metrics (0 = none).
    """
    if not tasks:
        raise LmEvalError("no lm-eval tasks given (e.g. --lm-eval-tasks arc_challenge,gsm8k)")
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    for path in paths:
        if not os.path.isdir(path):
            raise LmEvalError(f"lm-eval include path {str(path)!r} is not a directory of task YAMLs")
    task_manager = _task_manager(TaskManager, [str(p) for p in paths], tasks)
    _check_names(task_manager, tasks, paths)
    loaded = [item for name in tasks for item in _load_task(task_manager, name)]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=loaded, task_manager=task_manager, system_instruction=system_instruction,
        apply_chat_template=apply_chat_template, num_fewshot=num_fewshot, limit=limit,
        bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    groups = set(results.get("groups", {}))
    return {
        "tasks": {t: _metric_table(r) for t, r in results["results"].items() if t not in groups},
        "groups": {g: _metric_table(r) for g, r in results.get("groups", {}).items()},
        "num_samples": {t: n.get("effective") for t, n in results.get("n-samples", {}).items()},
        "versions": {t: v for t, v in results.get("versions", {}).items()},
        "settings": {"tasks": list(tasks), "include_path": [str(p) for p in paths], "limit": limit,
                     "num_fewshot": num_fewshot, "apply_chat_template": apply_chat_template,
                     "system_instruction": system_instruction, "lm_eval_version": _version()},
    }


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


__all__ = ["LmEvalError", "lambda_system_instruction", "run_lm_eval"]
