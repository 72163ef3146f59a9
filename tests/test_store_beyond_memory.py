"""Activations larger than the memory a training process is given still train.

A store three times larger than the memory budget (fp16 on disk; six times as the fp32 a
trainer works in) is streamed through one full epoch of headless training (train_cli) in a
subprocess under a real kernel memory limit. A control process under the same limit that
loads the whole store, as an in-memory dataset would, runs out of memory.

The budget: training here peaks about 180 MB above the post-import size (a group of four
16 MB shards, the shard being read, batch temporaries); the evaluation after training
needs headroom on top, because glibc keeps freed heap memory in fragments it cannot reuse
for larger blocks (at 256-288 MB the evaluation failed in some runs, training never did).

Why RLIMIT_DATA, set by the child itself right after its imports: a cgroup is not ours to
create here, and RLIMIT_AS counts address space, not memory: importing this torch build
maps about 3 GB (CUDA libraries, thread stacks, allocator reservations), so an address-space
limit tight enough to matter cannot even import torch. RLIMIT_DATA counts private writable
memory (heap, anonymous mappings, private file mappings such as safetensors' copy-on-write
shard maps): everywhere a tensor can live. The import alone puts about 750 MB there with this
torch (mostly CUDA libraries' writable data segments, never resident), so the limit is the
process's own data size after importing plus BUDGET_MB; that budget is what the data gets.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from saemnesia_core.activations import ActivationWriter
from saemnesia_core.prompts import LabelledPrompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_MB = 384
D_IN = 1024
TOKENS = 576 * 1024  # 1.1 GiB of fp16 activations: 3x the budget
BATCH = 1024

pytestmark = pytest.mark.slow

# The child: import, then limit itself to (its data size now + budget), then run.
LIMITED = r"""
import json, resource, sys
import torch
torch.set_num_threads(1)
from saemnesia_core import train_cli
from saemnesia_core.activations import ActivationStore

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

# one-time set-up before the limit: BLAS, and torch.optim's lazy imports (~80 MB of modules)
torch.randn(64, 64) @ torch.randn(64, 64)
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
limit = status("VmData") + int(sys.argv[2]) * 2 ** 20
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
cfg = json.loads(sys.argv[3])
if sys.argv[1] == "train":
    out = train_cli.run(cfg)
    print(json.dumps({"tokens_seen": out["tokens_seen"], "fvu": out["fvu"], "limit": limit,
                      "peak_rss": status("VmHWM"), "data_at_end": status("VmData")}))
else:  # control: the whole store in memory, shard by shard (fp16, half of what training would hold)
    store = ActivationStore(cfg["activations"])
    held = []
    try:
        for i in range(len(store.shards)):
            held.append(store.load_shard(i)["activations"].clone())
    except (MemoryError, RuntimeError) as e:  # torch reports a failed allocation as RuntimeError
        print(json.dumps({"out_of_memory": True, "shards_loaded": len(held), "of": len(store.shards),
                          "error": f"{type(e).__name__}: {e}"[:300]}))
    else:
        print(json.dumps({"out_of_memory": False, "shards_loaded": len(held), "of": len(store.shards)}))
"""


def _write_big_store(folder):
    """Low-rank structure plus noise, so the SAE has something to learn; 8192-row shards."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(64, D_IN, generator=g)
    w = ActivationWriter(folder, D_IN, [LabelledPrompt(f"p{i}", {}) for i in range(4)], shard_tokens=8192)
    for i in range(TOKENS // 4096):
        x = (torch.randn(4096, 64, generator=g) @ basis) * 0.2 + torch.randn(4096, D_IN, generator=g) * 0.05
        w.add(x, float(999 - (i % 10) * 100), i % 4)
    return w.close()


def _run(mode, cfg):
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-c", LIMITED, mode, str(BUDGET_MB), json.dumps(cfg)],
                       capture_output=True, text=True, env=env, timeout=600)
    return p, (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 and p.stdout.strip() else None)


@pytest.fixture()
def big_store(tmp_path, one_torch_thread):
    folder = tmp_path / "acts"
    yield _write_big_store(str(folder))
    shutil.rmtree(folder, ignore_errors=True)  # 1.1 GB: not left for pytest's kept temp folders


def test_store_three_times_the_memory_budget_trains_one_epoch_under_a_memory_limit(big_store, tmp_path):
    store = big_store
    size = sum(os.path.getsize(tmp_path / "acts" / s["file"]) for s in store.shards)
    assert size >= 3 * BUDGET_MB * 2 ** 20
    cfg = {"activations": str(tmp_path / "acts"), "work_dir": str(tmp_path / "work"),
           "out": str(tmp_path / "sae.safetensors"), "hook_point": "output_blocks.4.1",
           "train": {"n_latents": 128, "k": 8, "batch_size": BATCH, "steps": store.batches_per_epoch(BATCH),
                     "lr": 1e-3, "supervised": False, "checkpoint_every": 10 ** 6}}

    control, c = _run("control", cfg)
    assert control.returncode == 0, control.stderr[-3000:]
    assert c["out_of_memory"] and c["shards_loaded"] < c["of"], c  # everything in memory does not fit
    assert "allocate memory" in c["error"] or c["error"].startswith("MemoryError"), c

    trained, t = _run("train", cfg)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert t["tokens_seen"] >= store.n_tokens - BATCH  # every stored vector went through, once
    assert t["fvu"] < 0.9, t  # and it learnt something
