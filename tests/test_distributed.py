"""Multi-process training and less padding.

Two real processes (DDP over gloo on the CPU) launched by `torchrun` and by `accelerate launch` with the shipped
configs/accelerate/ddp.yaml, each running tests/_distributed_worker.py (which trains like `lambda-dpo train` and
writes what its process saw), compared with a single-process run of the same config in this process. Then every
other shipped config (DeepSpeed ZeRO-2, ZeRO-3, ZeRO-3 + offload, FSDP2) on 2 CPU processes: sharding proven from
what each process holds, steps, reference table and saved model equal to the DDP run's, resume, LoRA. Then the
length column, the seeded length-grouped sampler and the logged pad fraction.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import DATA, gpt2_tokenizer, tiny_llama
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from lambda_dpo.batching import SeededLengthGroupedSampler, pad_fraction, padded_length
from lambda_dpo.data import load_listwise
from lambda_dpo.train_job import load_policy, parse_config
from lambda_dpo.trainer import LambdaDPOTrainer

ROOT = Path(__file__).parent.parent
WORKER = Path(__file__).parent / "_distributed_worker.py"
HELPSTEER2 = DATA / "helpsteer2" / "train_sample.jsonl"  # 30 listwise records, k = 2, m = 5
STEPS, BATCH, WORLD = 3, 2, 2


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory) -> Path:
    """7 held-out records (the first 14 rows: 2 per prompt): 2 processes × 2 per batch leave 3 in the last round,
    so accelerate repeats records there and evaluation must not count them twice."""
    path = tmp_path_factory.mktemp("eval") / "heldout.jsonl"
    path.write_text("".join(HELPSTEER2.read_text().splitlines(keepends=True)[:14]))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model")
    tokenizer = gpt2_tokenizer()
    tiny_llama(len(tokenizer), seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def overrides(model_dir: Path, eval_file: Path, output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    """A `lambda-dpo train` config as command-line fields (the same for every launcher)."""
    return [
        "--model_name_or_path", str(model_dir), "--dataset", str(HELPSTEER2), "--eval_dataset", str(eval_file),
        "--dataset_format", "helpsteer2", "--output_dir", str(output_dir), "--reference_cache_dir", str(cache_dir),
        "--max_steps", str(STEPS), "--per_device_train_batch_size", str(BATCH), "--per_device_eval_batch_size", "2",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", str(STEPS),
        "--report_to", "none", "--max_length", "160", "--max_prompt_length", "80", "--disable_tqdm", "true",
        "--seed", "0", *extra,
    ]


def launch(launcher: list[str], results: Path, fields: list[str]) -> list[dict]:
    """Run the worker under ``launcher``; the per-rank results, rank 0 first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([*launcher, str(WORKER), str(results), *fields], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{launcher[:3]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return [json.loads((results / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def without_timing(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "tokens_per_second"} for entry in entries]


@pytest.fixture(scope="module")
def torchrun(model_dir, eval_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    fields = overrides(model_dir, eval_file, root / "out", root / "cache", "--use_cpu", "true")
    return {"ranks": launch(launcher, root / "results", fields), "out": root / "out", "cache": root / "cache"}


@pytest.fixture(scope="module")
def single(model_dir, eval_file, tmp_path_factory):
    """The same config in one process: reference table, evaluation before training, a saved 1-step model."""
    root = tmp_path_factory.mktemp("single")
    config = parse_config(None, overrides(model_dir, eval_file, root / "out", root / "cache", "--use_cpu", "true",
                                          "--max_steps", "1", "--save_strategy", "no"))
    data = load_listwise(config.dataset, format=config.dataset_format)
    held_out = load_listwise(config.eval_dataset, format=config.dataset_format)
    tokenizer, policy = load_policy(config)
    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    reference_forwards = []
    reference.register_forward_hook(lambda module, args, output: reference_forwards.append(1))
    trainer = LambdaDPOTrainer(policy, config, train_dataset=data, eval_dataset=held_out,
                               processing_class=tokenizer, ref_model=reference)
    initial_eval = trainer.evaluate()
    masks = []  # attention masks of the training forwards (the one-sequence split check excluded)
    policy.register_forward_hook(
        lambda module, args, kwargs, output: masks.append(kwargs["attention_mask"].clone())
        if kwargs["attention_mask"].shape[0] > 1 else None, with_kwargs=True)
    trainer.train()
    trainer.save_final()
    return {"trainer": trainer, "initial_eval": initial_eval, "masks": masks, "out": root / "out",
            "reference_forwards": len(reference_forwards)}


@pytest.mark.slow
def test_ranks_agree_on_every_step_and_on_the_weights(torchrun):
    rank0, rank1 = torchrun["ranks"]
    assert (rank0["world_size"], rank0["distributed_type"], rank0["backend"]) == (2, "DistributedType.MULTI_CPU", "gloo")
    assert [entry["step"] for entry in rank0["logs"]] == list(range(1, STEPS + 1))
    # loss, grad norm and every step metric (summed over both processes) are the same numbers on both ranks
    assert rank0["logs"] == rank1["logs"]
    assert rank0["weights"] == rank1["weights"]  # DDP synced the gradients: the replicas stayed identical


@pytest.mark.slow
def test_prefix_sharing_under_ddp_gives_the_same_run(torchrun, model_dir, eval_file, tmp_path):
    """The same 2-process run with each prompt forwarded once (prefix_sharing: true, in the step and the reference
    pass): the ranks still agree, and every logged number equals the plain run's (the fixture uses `auto`, which
    picks the plain layout for this tiny model)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    fields = overrides(model_dir, eval_file, tmp_path / "out", tmp_path / "cache", "--use_cpu", "true",
                       "--prefix_sharing", "true")
    shared = launch(launcher, tmp_path / "results", fields)
    assert shared[0]["logs"] == shared[1]["logs"] and shared[0]["weights"] == shared[1]["weights"]
    for plain_rank, shared_rank in zip(torchrun["ranks"], shared):
        torch.testing.assert_close(torch.tensor(shared_rank["reference_logps"]),
                                   torch.tensor(plain_rank["reference_logps"]), atol=1e-5, rtol=0)
        for a, b in zip(without_timing(plain_rank["logs"]), without_timing(shared_rank["logs"])):
            assert set(a) == set(b)
            for key in a:
                if key not in ("pad_fraction", "tokens_per_second", "epoch", "step"):  # the layouts pad differently
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key


@pytest.mark.slow
def test_ranks_train_on_disjoint_batches_in_sampler_order(torchrun, single):
    rank0, rank1 = (rank["ids"][: STEPS * BATCH] for rank in torchrun["ranks"])  # the loader prefetches one more
    assert not set(rank0) & set(rank1)
    # accelerate hands batch i of the (seeded, length-grouped) order to process i mod 2, on both processes alike
    dataset = single["trainer"].train_dataset
    order = list(SeededLengthGroupedSampler(BATCH, lengths=dataset["length"], seed=0))
    batches = [[dataset[i]["id"] for i in order[start:start + BATCH]] for start in range(0, len(order), BATCH)]
    assert rank0 == sum(batches[0:2 * STEPS:2], []) and rank1 == sum(batches[1:2 * STEPS:2], [])


@pytest.mark.slow
def test_reference_table_and_evaluation_equal_a_single_process(torchrun, single):
    expected = torch.tensor(list(single["trainer"].train_dataset["reference_logps"]))
    for rank in torchrun["ranks"]:
        torch.testing.assert_close(torch.tensor(rank["reference_logps"]), expected, atol=1e-5, rtol=0)
        # each process scored its share of the held-out records (accelerate's repeated rows dropped), then summed
        assert rank["initial_eval"] == pytest.approx(single["initial_eval"], abs=1e-5)
    # the pass was split: each process ran about half the forwards of the single process (batches of 2 sequences
    # or one shared row); each process also runs the one-time checks (logprobs' split, prefix sharing: 3 forwards)
    forwards = [rank["reference_forwards"] for rank in torchrun["ranks"]]
    total = single["reference_forwards"]
    assert all(0 < n <= (total - 3) // 2 + 4 for n in forwards), (forwards, total)
    assert len(list(torchrun["cache"].glob("reference_logps-*.json"))) == 2  # train and held-out, written once


@pytest.mark.slow
def test_main_process_saves_a_model_like_a_single_process_one(torchrun, single):
    out = torchrun["out"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, STEPS + 1))  # logged once
    assert (out / "lambda_dpo.json").exists()
    checkpoint = out / f"checkpoint-{STEPS}"
    assert sorted(p.name for p in checkpoint.glob("lambda_schedule_rank*.pt")) == [
        "lambda_schedule_rank0.pt", "lambda_schedule_rank1.pt"]

    def shapes(directory: Path) -> dict[str, tuple]:
        with safe_open(directory / "model.safetensors", "pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}

    assert shapes(out) == shapes(single["out"])
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in single["trainer"].model.parameters())


@pytest.mark.slow
def test_accelerate_launch_ddp_config_reuses_the_cache_and_trains_the_same(torchrun, model_dir, eval_file,
                                                                            tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", str(WORLD),
                  "--main_process_port", str(free_port())]
    # no use_cpu: on a machine without GPUs the trainer switches to the CPU (gloo) itself
    ranks = launch(accelerate, tmp_path / "results",
                   overrides(model_dir, eval_file, tmp_path / "out", torchrun["cache"]))
    assert [rank["distributed_type"] for rank in ranks] == ["DistributedType.MULTI_CPU"] * 2
    assert [rank["reference_forwards"] for rank in ranks] == [0, 0]  # the cache file answered every process
    for rank, earlier in zip(ranks, torchrun["ranks"]):
        assert without_timing(rank["logs"]) == without_timing(earlier["logs"])
        assert rank["weights"] == earlier["weights"]


# ---------------------------------------------------------------- sharded: DeepSpeed ZeRO-2/3 (+ offload), FSDP2
# Every shipped accelerate config, 2 CPU processes, 4 steps with a checkpoint at step 2, compared with the same run
# under ddp.yaml. ZeRO-3 and FSDP2 compute the reference table with their own launch (the pre-pass before the policy
# is sharded); ZeRO-2 and ZeRO-3 + offload reuse the DDP run's cache file. DeepSpeed JIT-compiles its CPU ops on its
# first use on a machine (~1 min: shared-memory collectives; cpu_adam for offload).
SHARDED_STEPS = 4
SHARDED = {  # config → (distributed type, wrapper class, parameters sharded, reuses the DDP reference cache)
    "deepspeed_zero2": ("DistributedType.DEEPSPEED", "DeepSpeedEngine", False, True),
    "deepspeed_zero3": ("DistributedType.DEEPSPEED", "DeepSpeedEngine", True, False),
    "deepspeed_zero3_offload": ("DistributedType.DEEPSPEED", "DeepSpeedEngine", True, True),
    "fsdp": ("DistributedType.FSDP", "FSDPLlamaForCausalLM", True, False),
}
RESUMED = ["deepspeed_zero3", "fsdp"]


def accelerate_launch(config: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", str(WORLD),
            "--main_process_port", str(free_port())]


def sharded_fields(model_dir: Path, output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--dataset", str(HELPSTEER2), "--dataset_format", "helpsteer2",
        "--output_dir", str(output_dir), "--reference_cache_dir", str(cache_dir), "--max_steps", str(SHARDED_STEPS),
        "--per_device_train_batch_size", str(BATCH), "--learning_rate", "1e-2", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--report_to", "none", "--max_length", "160",
        "--max_prompt_length", "80", "--disable_tqdm", "true", "--seed", "0", *extra,
    ]


class ShardedRuns:
    """Each (config, variant) run once per test module, launched on first use."""

    def __init__(self, model_dir: Path, root: Path):
        self.model_dir, self.root, self.done = model_dir, root, {}

    def __call__(self, config: str, variant: str = "full", *extra: str, cache: str | None = None) -> dict:
        key = (config, variant)
        if key not in self.done:
            where = self.root / f"{config}-{variant}"
            cache_dir = self.root / f"cache-{cache or config}-{variant}"
            ranks = launch(accelerate_launch(config), where / "results",
                           sharded_fields(self.model_dir, where / "out", cache_dir, *extra))
            self.done[key] = {"ranks": ranks, "out": where / "out"}
        return self.done[key]


@pytest.fixture(scope="module")
def sharded(model_dir, tmp_path_factory) -> ShardedRuns:
    return ShardedRuns(model_dir, tmp_path_factory.mktemp("sharded"))


def assert_same_steps(logs: list[dict], expected: list[dict]) -> None:
    """The same steps with the same numbers (float tolerance: the sharded reductions sum in another order). Not the
    pad fraction: under ZeRO-3 / FSDP the processes pick one layout together (prefix sharing only if every process
    wants it), under DDP each its own."""
    assert [entry["step"] for entry in logs] == [entry["step"] for entry in expected]
    for got, want in zip(without_timing(logs), without_timing(expected)):
        assert set(got) == set(want)
        for key in set(want) - {"pad_fraction"}:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["step"], key)


def saved_logps(directory: Path) -> torch.Tensor:
    """Per-sequence log-probs of a saved model on 8 fixed sequences."""
    from lambda_dpo.logprobs import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = torch.randint(0, model.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(0))
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 12:] = True
    with torch.no_grad():
        return sequence_logps(model, ids, torch.ones_like(ids), response, reduction="sum").logps


@pytest.mark.slow
@pytest.mark.parametrize("config", list(SHARDED))
def test_shipped_config_shards_and_trains_like_ddp(sharded, config):
    distributed_type, wrapper, params_sharded, reuses_cache = SHARDED[config]
    ddp = sharded("ddp")
    run = sharded(config, cache="ddp" if reuses_cache else None)
    rank0, rank1 = run["ranks"]
    assert [rank["distributed_type"] for rank in run["ranks"]] == [distributed_type] * 2
    assert rank0["world_size"] == 2 and rank0["logs"] == rank1["logs"]
    # sharding happened: each process holds about half the parameters (ZeRO-3, FSDP2) and half of AdamW's state
    for rank in run["ranks"]:
        shards = rank["sharding"]
        assert shards["wrapper"] == wrapper
        full = shards["params_full"]
        assert full == ddp["ranks"][0]["sharding"]["params_full"]
        held = shards["params_local"] / full
        assert held == pytest.approx(0.5, abs=0.01) if params_sharded else held == 1.0
        assert shards["optimizer_state_local"] / full == pytest.approx(0.5, abs=0.01)
    assert ddp["ranks"][0]["sharding"]["optimizer_state_local"] == ddp["ranks"][0]["sharding"]["params_full"]
    # the same data order, the same reference table, the same steps as DDP
    for rank, ddp_rank in zip(run["ranks"], ddp["ranks"]):
        assert rank["ids"][: SHARDED_STEPS * BATCH] == ddp_rank["ids"][: SHARDED_STEPS * BATCH]
        torch.testing.assert_close(torch.tensor(rank["reference_logps"]), torch.tensor(ddp_rank["reference_logps"]),
                                   atol=1e-5, rtol=0)
        assert (rank["reference_forwards"] == 0) == reuses_cache  # a second run reuses the cache file
        assert_same_steps(rank["logs"], ddp_rank["logs"])
    # the saved folder is a plain Hugging Face model with the DDP-trained model's log-probs
    assert (run["out"] / "lambda_dpo.json").exists()
    torch.testing.assert_close(saved_logps(run["out"]), saved_logps(ddp["out"]), atol=1e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("config", RESUMED)
def test_resume_under_sharding_repeats_the_uninterrupted_run(sharded, config):
    """Stopped after the checkpoint at step 2 (a killed run leaves exactly that folder), resumed: steps 3–4 log
    the uninterrupted run's numbers (the λ drawn by every process's schedule included) and reuse its cache."""
    uninterrupted = sharded(config)
    checkpoint = uninterrupted["out"] / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("lambda_schedule_rank*.pt")) == [
        "lambda_schedule_rank0.pt", "lambda_schedule_rank1.pt"]
    resumed = sharded(config, "resumed", "--resume_from_checkpoint", str(checkpoint), cache=config)
    for rank, reference in zip(resumed["ranks"], uninterrupted["ranks"]):
        after = [entry for entry in rank["logs"] if entry["step"] > 2]
        assert [entry["step"] for entry in after] == [3, 4]
        assert without_timing(after) == without_timing(reference["logs"][2:])
    torch.testing.assert_close(saved_logps(resumed["out"]), saved_logps(uninterrupted["out"]), atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["deepspeed_zero3", "fsdp"])
def test_lora_with_adapter_disabled_reference_under_sharding(sharded, config):
    lora = ("--use_lora", "true", "--reference", "adapter-disabled", "--max_steps", "2", "--save_strategy", "no")
    ddp = sharded("ddp", "lora", *lora)
    run = sharded(config, "lora", *lora)
    shards = run["ranks"][0]["sharding"]
    assert shards["params_local"] / shards["params_full"] == pytest.approx(0.5, abs=0.01)
    for rank, ddp_rank in zip(run["ranks"], ddp["ranks"]):
        torch.testing.assert_close(torch.tensor(rank["reference_logps"]), torch.tensor(ddp_rank["reference_logps"]),
                                   atol=1e-5, rtol=0)
        assert_same_steps(rank["logs"], ddp_rank["logs"])

    def adapter(directory: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(directory / "adapter_model.safetensors")

    saved, expected = adapter(run["out"]), adapter(ddp["out"])
    assert set(saved) == set(expected)
    for name in expected:
        torch.testing.assert_close(saved[name], expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_refused_sharded_setups_say_why_through_the_cli(model_dir, tmp_path):
    """`accelerate launch … -m lambda_dpo.cli train` as a user runs it: merge_lora under ZeRO-3 stops before
    training with one line naming the setting and what to do instead."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    fields = sharded_fields(model_dir, tmp_path / "out", tmp_path / "cache", "--use_lora", "true",
                            "--merge_lora", "true")
    done = subprocess.run([*accelerate_launch("deepspeed_zero3"), "-m", "lambda_dpo.cli", "train", *fields],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    said = [line for line in (done.stderr + done.stdout).splitlines() if "merge_lora=true" in line]
    assert said and all(line.startswith("lambda-dpo train: merge_lora=true is not supported under DeepSpeed "
                                        "ZeRO-3") for line in said), said
    assert not (tmp_path / "out" / "checkpoint-2").exists()


# ---------------------------------------------------------------- less padding


def test_padded_length_and_pad_fraction():
    assert padded_length([7, 12, 9]) == 12 and padded_length([]) == 0
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert pad_fraction(mask) == pytest.approx(5 / 12)


def test_length_grouped_sampler_is_seeded_per_epoch_and_cuts_padding():
    lengths = torch.randint(20, 1000, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = SeededLengthGroupedSampler(4, lengths=lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(400))
    assert first == list(SeededLengthGroupedSampler(4, lengths=lengths, seed=3))  # every process draws this order
    sampler.set_epoch(1)
    assert list(sampler) != first

    def padding(order):  # pad positions when each batch of 4 is padded to its longest record
        batches = [[lengths[i] for i in order[s:s + 4]] for s in range(0, len(order), 4)]
        return sum(len(b) * max(b) - sum(b) for b in batches)

    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(3)).tolist()
    assert padding(first) < 0.2 * padding(shuffled)


@pytest.mark.slow
def test_length_column_and_logged_pad_fraction(single):
    trainer = single["trainer"]
    dataset = trainer.train_dataset
    for row in dataset:
        assert row["length"] == max(len(row["prompt_input_ids"]) + len(r) for r in row["response_input_ids"])
    logged = [entry["pad_fraction"] for entry in trainer.state.log_history if "pad_fraction" in entry]
    assert len(logged) == 1 and len(single["masks"]) == 1
    mask = single["masks"][0]
    if mask.dim() == 4:  # shared prompts: a real token attends the row's first token, padding only itself
        mask = mask[:, 0, :, 0].long()
    assert logged[0] == pytest.approx(pad_fraction(mask), abs=1e-9)
