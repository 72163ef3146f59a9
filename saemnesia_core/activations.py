"""Activation store: block outputs written as sharded fp16 safetensors plus a JSON index,
read back as a shuffled stream that never needs more than a few shards in memory."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .errors import SAEError
from .fileio import save_json_atomic, save_safetensors_atomic
from .prompts import LabelledPrompt, concept_kinds

INDEX = "index.json"


def positions(h: torch.Tensor) -> torch.Tensor:
    """[N, C] activation vectors of a block's activations: a map [B, C, H, W] gives one per
    position, tokens [B, T, C] one per token."""
    if h.dim() == 4:
        return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    return h.reshape(-1, h.shape[-1])


class ActivationWriter:
    """Append [tokens, d_in] activations with their timestep and prompt id; shards of
    `shard_tokens` rows are written as they fill. `close()` writes the index."""

    def __init__(self, folder: str, d_in: int, prompts: list[LabelledPrompt], hook_point: str = "",
                 model_family: str = "unknown", shard_tokens: int = 65536):
        self.folder, self.d_in, self.shard_tokens = folder, int(d_in), int(shard_tokens)
        self.prompts, self.hook_point, self.model_family = prompts, hook_point, model_family
        os.makedirs(folder, exist_ok=True)
        self.shards: list[dict] = []
        self._buf: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._n = 0

    def add(self, acts: torch.Tensor, timestep: float, prompt_id: int):
        if acts.dim() != 2 or acts.shape[1] != self.d_in:
            raise SAEError(f"activations of shape {tuple(acts.shape)} do not match d_in={self.d_in}")
        acts = acts.detach().to("cpu", torch.float32)
        if not torch.isfinite(acts).all():
            raise SAEError(f"NaN/inf activations at timestep {timestep:.1f} (prompt {prompt_id}). The model produced "
                           "non-finite values: check its dtype (try fp32) and the sampler settings.")
        n = acts.shape[0]
        self._buf.append((acts.half(), torch.full((n,), float(timestep)), torch.full((n,), int(prompt_id), dtype=torch.int32)))
        self._n += n
        if self._n >= self.shard_tokens:
            self._flush()

    def _flush(self):
        if not self._buf:
            return
        a = torch.cat([b[0] for b in self._buf])
        t = torch.cat([b[1] for b in self._buf])
        p = torch.cat([b[2] for b in self._buf])
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_safetensors_atomic({"activations": a, "timesteps": t, "prompt_ids": p}, os.path.join(self.folder, name))
        self.shards.append({"file": name, "tokens": int(a.shape[0])})
        self._buf, self._n = [], 0

    def close(self) -> "ActivationStore":
        self._flush()
        if not self.shards:
            raise SAEError("no activations were collected (empty prompt list or zero steps)")
        index = {"d_in": self.d_in, "hook_point": self.hook_point, "model_family": self.model_family,
                 "shards": self.shards, "prompts": [asdict(p) for p in self.prompts],
                 "concepts": concept_kinds(self.prompts)}
        save_json_atomic(index, os.path.join(self.folder, INDEX))
        return ActivationStore(self.folder)


class ActivationStore:
    def __init__(self, folder: str):
        path = os.path.join(folder, INDEX)
        if not os.path.isfile(path):
            raise SAEError(f"{folder} holds no activation index ({INDEX}); collect activations first.")
        with open(path, encoding="utf-8") as f:
            self.meta = json.load(f)
        self.folder = folder
        self.d_in = int(self.meta["d_in"])
        self.shards = self.meta["shards"]
        self.prompts = [LabelledPrompt(p["text"], p.get("labels", {})) for p in self.meta["prompts"]]
        self.concepts: dict[str, str] = self.meta.get("concepts", {})
        self.concept_names = list(self.concepts)
        # multi-hot labels per prompt: token labels are a lookup by prompt id
        lab = torch.zeros(len(self.prompts), len(self.concept_names))
        for i, p in enumerate(self.prompts):
            for name in p.labels:
                lab[i, self.concept_names.index(name)] = 1.0
        self.prompt_labels = lab

    @property
    def n_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def timesteps(self) -> list[float]:
        """The distinct timesteps collected, descending (read from the shards' small tensors)."""
        seen = set()
        for s in self.shards:  # only the small tensor is read, never the activations
            with safe_open(os.path.join(self.folder, s["file"]), framework="pt") as f:
                seen.update(f.get_tensor("timesteps").unique().tolist())
        return sorted(seen, reverse=True)

    def load_shard(self, i: int) -> dict[str, torch.Tensor]:
        return load_file(os.path.join(self.folder, self.shards[i]["file"]))

    def batches(self, batch_size: int, seed: int, epoch: int = 0, shard_ids: list[int] | None = None,
                buffer_shards: int = 4, skip: int = 0):
        """Shuffled stream of (acts fp32, timesteps, prompt_ids) batches for one epoch.

        Shard order and token order are drawn from (seed, epoch): the same call yields the
        same stream, so a resumed run can skip the batches it already consumed. At most
        `buffer_shards` shards (plus the one being read and less than a batch carried over)
        are in memory at once. The last partial batch is dropped.
        """
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        ids = list(range(len(self.shards))) if shard_ids is None else list(shard_ids)
        order = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()]
        carry = None
        produced = 0
        for start in range(0, len(order), buffer_shards):
            parts = self._load_group(order[start:start + buffer_shards], carry)
            carry = None
            perm = torch.randperm(parts["activations"].shape[0], generator=g)
            n_full = parts["activations"].shape[0] // batch_size
            for b in range(n_full):
                if produced >= skip:
                    idx = perm[b * batch_size:(b + 1) * batch_size]
                    yield parts["activations"][idx].float(), parts["timesteps"][idx], parts["prompt_ids"][idx].long()
                produced += 1
            rest = perm[n_full * batch_size:]
            carry = {k: v[rest] for k, v in parts.items()}
            del parts, perm  # free this group before the next one is read

    def _load_group(self, shard_ids: list[int], carry: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The carried-over rows followed by the given shards, in one preallocated buffer:
        each shard is copied in and dropped, so the peak is the group plus one shard."""
        n = sum(self.shards[i]["tokens"] for i in shard_ids) + (0 if carry is None else carry["timesteps"].shape[0])
        out = {"activations": torch.empty(n, self.d_in, dtype=torch.float16),
               "timesteps": torch.empty(n), "prompt_ids": torch.empty(n, dtype=torch.int32)}
        at = 0
        if carry is not None:
            at = carry["timesteps"].shape[0]
            for k, v in carry.items():
                out[k][:at] = v
        for i in shard_ids:
            shard = self.load_shard(i)
            m = shard["timesteps"].shape[0]
            for k, v in shard.items():
                out[k][at:at + m] = v
            at += m
            del shard
        return out

    def batches_per_epoch(self, batch_size: int, shard_ids: list[int] | None = None) -> int:
        ids = range(len(self.shards)) if shard_ids is None else shard_ids
        return sum(self.shards[i]["tokens"] for i in ids) // batch_size

    def iter_tokens(self, chunk: int = 4096):
        """All tokens in storage order (for computing statistics)."""
        for i in range(len(self.shards)):
            s = self.load_shard(i)
            for a in range(0, s["activations"].shape[0], chunk):
                yield (s["activations"][a:a + chunk].float(), s["timesteps"][a:a + chunk],
                       s["prompt_ids"][a:a + chunk].long())
