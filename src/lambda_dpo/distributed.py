"""Multi-process launches that accelerate leaves half-configured on a machine without GPUs, and the collectives a
sharded policy needs.

Every shipped `configs/accelerate/*.yaml` must also run on CPU processes (that is how CI proves them; see
docs/distributed.md). accelerate 1.15 gets three things wrong there, each silently:

* **DDP** launched with `ddp.yaml` (or torchrun) without a GPU forms no process group: each process trains alone
  on all the data. :func:`launched_without_accelerator` tells the config to set ``use_cpu`` (DDP over gloo).
* **DeepSpeed** initialises its gloo group but leaves accelerate's backend unset, so accelerate counts one process
  and every process trains on all the data (and its object gathers fail). :func:`deepspeed_launched_without_accelerator`
  tells the config to name the backend (``ddp_backend: gloo``). Separately, accelerate registers the DeepSpeed
  config with transformers whatever ``zero3_init_flag`` says, so ``from_pretrained`` partitions a ZeRO-3 model while
  loading it; :func:`full_weights_unless_zero3_init` honours ``zero3_init_flag: false``.
* **FSDP** is only ever enabled by accelerate for accelerator processes; on CPU processes it falls back to no
  distribution at all. torch's FSDP2 (``fully_shard``) itself works on CPU over gloo, so
  :func:`enable_fsdp_on_cpu` switches the Trainer's accelerator to FSDP after it is built (accelerate then wraps the
  model with its own FSDP2 code, exactly as on GPUs).

Sharded weights are gathered collectively inside forwards, so under ZeRO-3 and FSDP every process must run the same
forwards: :func:`all_processes_agree` makes a per-batch choice common to all of them.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1")


def _several_processes() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerator_available() -> bool:
    """A GPU (or other torch accelerator) is visible to this process."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def launched_without_accelerator() -> bool:
    """Several processes (torchrun / accelerate launch set WORLD_SIZE) and no accelerator, with plain DDP or FSDP:
    accelerate must be told ``use_cpu`` to form a gloo group. DeepSpeed has a CPU accelerator of its own."""
    return _several_processes() and not accelerator_available() and not _env_flag("ACCELERATE_USE_DEEPSPEED")


def deepspeed_launched_without_accelerator() -> bool:
    """`accelerate launch` with a DeepSpeed config, several processes, no GPU (DeepSpeed's CPU accelerator)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED") and _several_processes() and not accelerator_available()


def fsdp_launched_without_accelerator() -> bool:
    """`accelerate launch` with an FSDP config, several processes, no GPU."""
    return _env_flag("ACCELERATE_USE_FSDP") and _several_processes() and not accelerator_available()


@contextmanager
def full_weights_unless_zero3_init():
    """Load full weights under DeepSpeed ZeRO-3 when the launch says ``zero3_init_flag: false``.

    The reference pre-pass needs every weight in every process (the engine partitions the policy when training
    starts); without this the flag never reaches ``from_pretrained``. The registered config object is put back
    after the load (transformers has no public getter for it, hence the private weak reference)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    zero3_init = os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true").lower() not in ("false", "0")
    if zero3_init or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    registered = hf_deepspeed._hf_deepspeed_config_weak_ref()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(registered)


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Turn the accelerator of an FSDP launch on CPU processes (where accelerate built plain multi-CPU DDP) into
    FSDP, with the plugin read from the launch's environment as accelerate reads it on GPUs. True if it did."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_launched_without_accelerator() or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs fsdp_version: 2 in the accelerate config (torch's fully_shard; "
                         "FSDP version 1 needs GPUs); configs/accelerate/fsdp.yaml uses it")
    # Both states, as accelerate itself does: every AcceleratorState() copies PartialState's type again.
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    logger.info("FSDP launch on CPU processes: sharding with torch's FSDP2 over gloo")
    return True


def all_processes_agree(wanted: bool, device) -> bool:
    """``wanted`` on every process (a collective: every process must call it at the same point)."""
    flag = torch.tensor([int(wanted)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def check_full_weights(model: torch.nn.Module) -> None:
    """The reference pass runs before accelerate shards anything, so each process needs the whole reference."""
    for name, parameter in model.named_parameters():
        if hasattr(parameter, "ds_id") or parameter.is_meta:
            raise ValueError(
                f"cannot precompute reference log-probs: parameter {name!r} is "
                f"{'partitioned by DeepSpeed ZeRO-3' if hasattr(parameter, 'ds_id') else 'on the meta device'} "
                "at load time, and the reference pass needs the full weights in every process. Set "
                "zero3_init_flag: false (DeepSpeed) or fsdp_cpu_ram_efficient_loading: false (FSDP) in the "
                "accelerate config, as configs/accelerate/*.yaml do; or fill the cache first with a "
                "single-process run that uses the same reference_cache_dir"
            )
