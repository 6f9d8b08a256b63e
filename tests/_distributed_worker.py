"""One process of a multi-process λ-DPO run, for tests/test_distributed.py (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_distributed_worker.py RESULTS_DIR \
        --model_name_or_path DIR --dataset FILE --output_dir DIR … (any LambdaDPOConfig field)

Trains like `lambda-dpo train` (same config parsing, data loading and policy loading), then writes
``RESULTS_DIR/rank<r>.json`` with what this process saw: its training log entries, the record ids of its batches,
the reference table it trained with, how many reference forwards it ran, the metrics of `evaluate()` before
training (with ``--eval_dataset``), a digest of its final weights and what proves sharding (`sharding`).
``--resume_from_checkpoint DIR`` resumes as `lambda-dpo train` does.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import xxhash

from lambda_dpo.data import load_listwise
from lambda_dpo.model_dir import load_pretrained
from lambda_dpo.train_job import load_policy, parse_config
from lambda_dpo.trainer import LambdaDPOTrainer


class RecordingCollator:
    """The trainer's collator, also recording the record ids of every batch it builds."""

    def __init__(self, collator):
        self.collator, self.ids = collator, []

    def __call__(self, rows):
        self.ids += [row["id"] for row in rows]
        return self.collator(rows)


def weights_digest(model: torch.nn.Module) -> str | None:
    """A digest of the full weights, when this process holds them (None under ZeRO-3 / FSDP)."""
    if any(hasattr(p, "ds_id") or hasattr(p, "to_local") for p in model.parameters()):
        return None
    digest = xxhash.xxh3_64()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def local_and_full_numel(tensor: torch.Tensor) -> tuple[int, int]:
    """Elements this process stores of a parameter or state tensor, and of the whole tensor."""
    if hasattr(tensor, "ds_tensor"):  # DeepSpeed ZeRO-3 partitioned parameter
        return tensor.ds_tensor.numel(), tensor.ds_numel
    if hasattr(tensor, "to_local"):  # FSDP2 DTensor
        return tensor.to_local().numel(), tensor.numel()
    return tensor.numel(), tensor.numel()


def sharding(trainer) -> dict:
    """What proves (or disproves) sharding on this process: the wrapper in use, the parameter elements it holds,
    and the elements of its AdamW state (first moments)."""
    params = [local_and_full_numel(p) for p in trainer.model_wrapped.parameters()]
    optimizer = trainer.optimizer
    while hasattr(optimizer, "optimizer"):  # accelerate's wrapper → DeepSpeed's ZeRO optimizer → torch's AdamW
        optimizer = optimizer.optimizer
    moments = [state["exp_avg"] for state in optimizer.state.values() if "exp_avg" in state]
    return {
        "wrapper": type(trainer.model_wrapped).__name__,
        "params_local": sum(local for local, _ in params),
        "params_full": sum(full for _, full in params),
        "optimizer_state_local": sum(local_and_full_numel(m)[0] for m in moments),
    }


def main(results_dir: str, overrides: list[str]) -> None:
    config = parse_config(None, overrides)
    data = load_listwise(config.dataset, format=config.dataset_format)
    tokenizer, policy = load_policy(config)
    _, reference = load_pretrained(config.model_name_or_path, tokenizer=False)  # as the trainer loads it
    reference_forwards = []
    reference.register_forward_hook(lambda module, args, output: reference_forwards.append(1))
    eval_data = load_listwise(config.eval_dataset, format=config.dataset_format) if config.eval_dataset else None
    trainer = LambdaDPOTrainer(policy, config, train_dataset=data, eval_dataset=eval_data,
                               processing_class=tokenizer, ref_model=reference)
    initial_eval = trainer.evaluate() if eval_data is not None else None
    trainer.data_collator = recorder = RecordingCollator(trainer.data_collator)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_final()
    state = trainer.accelerator.state
    result = {
        "rank": state.process_index,
        "world_size": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
        "ids": recorder.ids,
        "reference_logps": list(trainer.train_dataset["reference_logps"]),
        "reference_forwards": len(reference_forwards),
        "initial_eval": initial_eval,
        "weights": weights_digest(trainer.accelerator.unwrap_model(trainer.model)),
        "sharding": sharding(trainer),
    }
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"rank{state.process_index}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
