"""Headless SAE training from a config file, on one process or many (torchrun).

    python -m saemnesia_core.train_cli --config run.json
    torchrun --nproc_per_node 8 -m saemnesia_core.train_cli --config run.json

run.json: {"activations": "<store folder>", "work_dir": "<checkpoints>", "out": "<sae.safetensors>",
           "hook_point": "output_blocks.4.1", "model_family": "sd1", "train": {TrainConfig fields}}

Under torchrun every rank reads its own shards (rank, rank+world, ...) and gradients are
averaged with all-reduce (gloo on CPU, NCCL on GPUs); rank 0 writes checkpoints and the file.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os

import torch

from .activations import ActivationStore
from .checkpoint import SAEInfo, save_sae
from .errors import SAEError
from .training import TrainConfig, Trainer, build_index, training_record


def run(cfg: dict) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1:
        return _train(cfg, rank, world)
    import torch.distributed as dist

    # Import it while no group exists: its functions take `group=group.WORLD` as a default
    # argument, evaluated at import. Imported after init_process_group (torch.optim pulls it in
    # through torch._dynamo when the Trainer builds Adam), they would hold the live group, so
    # destroy_process_group could not free it: gloo's worker and socket threads would still run
    # while the interpreter exits, and a rank would now and then abort there
    # ("terminate called without an active exception").
    importlib.import_module("torch.distributed.nn.functional")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        result = _train(cfg, rank, world)
        dist.barrier()  # no rank leaves before rank 0 has written the file
        return result
    finally:
        # frees the group and joins its threads (also when a rank failed: it exits non-zero, cleanly)
        dist.destroy_process_group()


def _train(cfg: dict, rank: int, world: int) -> dict:
    store = ActivationStore(cfg["activations"])
    if world > len(store.shards):
        raise SAEError(f"{world} processes but only {len(store.shards)} activation shards; every rank needs one. "
                       "Collect with smaller shards or use fewer processes.")
    tc = TrainConfig(**cfg.get("train", {}))
    shard_ids = list(range(rank, len(store.shards), world)) if world > 1 else None
    trainer = Trainer(store, tc, cfg["work_dir"], shard_ids=shard_ids, rank=rank, world_size=world,
                      progress=_printer(rank))
    sae = trainer.train()
    sae.requires_grad_(False)
    result = {}
    if rank == 0:
        index = build_index(sae, store, tc, trainer.state.assignment or None)
        record = training_record(trainer, sae, world_size=world)
        save_sae(cfg["out"], sae, SAEInfo(cfg.get("hook_point", store.meta.get("hook_point", "")),
                                          cfg.get("model_family", store.meta.get("model_family", "unknown")), index, record))
        result = record
    return result


def _printer(rank):
    def progress(step, total, m):
        if rank == 0 and (step % max(1, total // 20) == 0 or step == total):
            print(f"step {step}/{total} loss {m['loss']:.4f} fvu {m['fvu']:.4f} dead {m['dead_fraction']:.3f} "
                  f"{m['tokens_per_s']:.0f} tok/s", flush=True)
    return progress


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    with open(args.config, encoding="utf-8") as f:
        cfg = json.load(f)
    out = run(cfg)
    if out:
        print(json.dumps({k: out[k] for k in ("fvu", "dead_fraction", "seconds", "tokens_seen", "world_size")}))


if __name__ == "__main__":
    main()
