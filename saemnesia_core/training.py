"""Training a TopK SAE on stored activations: SAeUron's recipe, plus SAEmnesia's
supervised term when the prompts carry concept labels.

loss = FVU + aux_coef * AuxK(dead latents)
     [+ bce * BCE(assigned latents' logits, prompt labels)
      + mean_act * mean(assigned pre-activations)
      + decorrelation * mean(corr(object latents, style latents)^2)]

Supervised training first runs unsupervised for `assign_after` of the steps, then
assigns one latent per concept by SAeUron's score (objects first) and turns the
supervised term on: the dedicated latents are picked from what the SAE already learnt.

Resumable: a checkpoint (weights, Adam state, step, dead-latent counters, assignment) is
written atomically every `checkpoint_every` steps and on cancel; a new call with the same
work folder and config continues from it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from . import sparse_ops
from .activations import ActivationStore
from .checkpoint import read_safetensors_metadata
from .concepts import ConceptIndex, ConceptStats, assign_anchors, assign_latents, select_unsupervised, supervised_index
from .errors import SAEError, TrainingCancelled
from .fileio import save_safetensors_atomic
from .sae import TopKSAE, geometric_median

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainConfig:
    expansion: int = 16
    n_latents: int = 0  # 0: d_in * expansion
    k: int = 32
    batch_size: int = 4096
    steps: int = 1000
    lr: float = 4e-4
    adam_eps: float = 6.25e-10
    grad_clip: float = 1.0
    aux_coef: float = 1 / 32
    dead_tokens: int = 10_000_000  # a latent silent this long is dead (AuxK)
    batch_topk: bool = True
    supervised: bool = True  # used only when the store has labels
    assign_after: float = 0.3
    bce: float = 1.0
    mean_act: float = 0.01
    decorrelation: float = 0.1
    seed: int = 0
    checkpoint_every: int = 200
    quantile: float = 0.999  # unsupervised selection
    max_latents: int = 8
    reserve_concept_latents: bool = True  # supervised: concept latents skip the TopK competition
    default_multiplier_supervised: float = -1.5
    default_multiplier_unsupervised: float = -10.0

    def latents_for(self, d_in: int) -> int:
        return self.n_latents or d_in * self.expansion

    def identity(self) -> dict:
        """Settings that must match for a checkpoint to be resumed."""
        d = asdict(self)
        for k in ("checkpoint_every",):
            d.pop(k)
        return d


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    assignment: dict[str, int] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


Progress = Callable[[int, int, dict], None]


def _sae_loss_terms(sae: TopKSAE, x: torch.Tensor, cfg: TrainConfig, dead: torch.Tensor,
                    scores: torch.Tensor | None = None):
    """FVU and AuxK of one batch. Returns (fired latents [n] bool, fvu, auxk).

    `scores`: an optional [batch, n_latents] buffer for the encoder's scores, reused from step
    to step (a fresh one per step costs page faults on every step: ~0.2 s at 4096 x 20480).
    """
    xc = x - sae.b_dec
    with torch.no_grad():
        # scores for the selection only; no ReLU pass: select() keeps positive entries alone
        if scores is not None and scores.shape == (x.shape[0], sae.n_latents):
            pre = torch.addmm(sae.b_enc, xc, sae.W_enc.t(), out=scores)
        else:
            pre = F.linear(xc, sae.W_enc, sae.b_enc)
    compete = sae.competing(pre)
    if cfg.batch_topk:
        rows, cols = sparse_ops.select(compete, k_total=cfg.k * x.shape[0])
    else:
        rows, cols = sparse_ops.select(compete, k_per_row=cfg.k)
    rows, cols = sparse_ops.with_columns(pre, rows, cols, sae.reserved)
    vals = sparse_ops.selected_values(xc, sae.W_enc, sae.b_enc, pre, rows, cols)
    x_hat = sparse_ops.sparse_decode(rows, cols, vals, sae.W_dec, x.shape[0]) + sae.b_dec
    err = x - x_hat
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = err.pow(2).sum() / total_var
    aux = x.new_zeros(())
    if sae.reserved.numel():
        dead = dead.index_fill(0, sae.reserved, False)  # reserved latents are not AuxK's to revive
    n_dead = int(dead.sum())
    if n_dead and cfg.aux_coef:
        k_aux = min(max(1, sae.d_in // 2), n_dead)
        arows, acols = sparse_ops.select(pre, k_per_row=k_aux, mask=dead)
        if arows.numel():
            avals = sparse_ops.selected_values(xc, sae.W_enc, sae.b_enc, pre, arows, acols)
            e_hat = sparse_ops.sparse_decode(arows, acols, avals, sae.W_dec, x.shape[0])
            e = err.detach()
            aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
    fired = torch.zeros(sae.n_latents, dtype=torch.bool, device=x.device)
    fired[cols] = True
    return fired, fvu, aux


def _supervised_terms(sae: TopKSAE, x, labels, assigned, obj_cols, sty_cols, cfg: TrainConfig):
    logits = sae.pre_logits(x)[:, assigned]  # [B, n_concepts]
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    acts = F.relu(logits)
    mean_act = acts.mean()
    decor = x.new_zeros(())
    if obj_cols and sty_cols:
        a = acts - acts.mean(0)
        a = a / a.pow(2).mean(0).sqrt().clamp_min(1e-6)
        corr = a[:, obj_cols].T @ a[:, sty_cols] / a.shape[0]
        decor = corr.pow(2).mean()
    return bce, mean_act, decor


def concept_statistics(sae: TopKSAE, store: ActivationStore, timesteps: list[float] | None = None,
                       should_cancel: Callable[[], bool] | None = None) -> ConceptStats:
    stats = ConceptStats(sae.n_latents, store.concepts, timesteps if timesteps is not None else store.timesteps())
    with torch.no_grad():
        for acts, ts, pids in store.iter_tokens():
            if should_cancel and should_cancel():
                raise TrainingCancelled()
            code = sae.encode(acts)
            stats.add(code.values, code.indices, ts, store.prompt_labels[pids], inputs=acts)
    return stats


def build_index(sae: TopKSAE, store: ActivationStore, cfg: TrainConfig, assignment: dict[str, int] | None,
                should_cancel=None) -> ConceptIndex:
    if not store.concepts:
        return ConceptIndex(timesteps=store.timesteps())
    stats = concept_statistics(sae, store, should_cancel=should_cancel)
    if assignment:
        return assign_anchors(supervised_index(stats, assignment, cfg.default_multiplier_supervised), sae.W_dec)
    return select_unsupervised(stats, cfg.quantile, cfg.max_latents, cfg.default_multiplier_unsupervised)


def _adam(params, cfg: TrainConfig) -> torch.optim.Adam:
    """torch's fused Adam where this torch has it for the device (one pass per tensor: ~10x
    faster than the default per-tensor loop on a CPU), else the default implementation."""
    try:
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)


class Trainer:
    def __init__(self, store: ActivationStore, cfg: TrainConfig, work_dir: str,
                 progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
                 shard_ids: list[int] | None = None, rank: int = 0, world_size: int = 1,
                 restart_on_mismatch: bool = False):
        self.store, self.cfg, self.work_dir = store, cfg, work_dir
        self.progress, self.should_cancel = progress, should_cancel
        self.rank, self.world_size = rank, world_size
        self.shard_ids = shard_ids
        self.restart_on_mismatch = restart_on_mismatch
        os.makedirs(work_dir, exist_ok=True)
        torch.manual_seed(cfg.seed)
        d_in = store.d_in
        self.sae = TopKSAE(d_in, cfg.latents_for(d_in), cfg.k)
        self.sae.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        for p in self.sae.parameters():
            p.requires_grad_(True)
        self.opt = _adam(list(self.sae.parameters()), cfg)
        self.since_fired = torch.zeros(self.sae.n_latents, dtype=torch.long)
        self.state = TrainState()
        self.supervised = cfg.supervised and bool(store.concepts)
        names = store.concept_names
        self.obj_cols = [i for i, n in enumerate(names) if store.concepts[n] == "object"]
        self.sty_cols = [i for i, n in enumerate(names) if store.concepts[n] == "style"]
        if cfg.batch_size % world_size:
            raise SAEError(f"batch_size {cfg.batch_size} does not split evenly over {world_size} processes")
        self.local_batch = cfg.batch_size // world_size  # batch_size is global: same optimisation at any scale
        self.per_epoch = store.batches_per_epoch(self.local_batch, shard_ids)
        if self.per_epoch == 0:
            raise SAEError(f"only {store.n_tokens} activation vectors were collected, fewer than one batch of "
                           f"{self.local_batch}; collect more (more prompts or steps) or lower the batch size")
        self.resumed = self._resume()

    # --- checkpoints ------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return os.path.join(self.work_dir, CHECKPOINT)

    def save_checkpoint(self):
        if self.rank != 0:
            return
        tensors = {f"sae.{n}": p for n, p in self.sae.named_parameters()}
        for n, p in self.sae.named_parameters():
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"adam.{n}.{key}"] = st[key]
            if "step" in st:
                tensors[f"adam.{n}.step"] = torch.as_tensor(st["step"]).reshape(1)
        tensors["since_fired"] = self.since_fired
        meta = {"config": json.dumps(self.cfg.identity()), "state": json.dumps(asdict(self.state))}
        save_safetensors_atomic(tensors, self.checkpoint_path, metadata=meta)

    def _resume(self) -> bool:
        path = self.checkpoint_path
        if not os.path.isfile(path):
            return False
        meta = read_safetensors_metadata(path)
        if json.loads(meta.get("config", "{}")) != json.loads(json.dumps(self.cfg.identity())):
            if self.restart_on_mismatch:  # the caller changed the settings on purpose: start over
                os.remove(path)
                return False
            raise SAEError(f"{path} was written with other training settings; delete the folder "
                           f"{self.work_dir} to start over, or use the same settings to resume.")
        t = load_file(path)
        with torch.no_grad():
            for n, p in self.sae.named_parameters():
                p.copy_(t[f"sae.{n}"])
        for n, p in self.sae.named_parameters():
            if f"adam.{n}.exp_avg" in t:
                self.opt.state[p] = {"step": t[f"adam.{n}.step"].reshape(()).clone(),
                                     "exp_avg": t[f"adam.{n}.exp_avg"].clone(),
                                     "exp_avg_sq": t[f"adam.{n}.exp_avg_sq"].clone()}
        self.since_fired = t["since_fired"].clone()
        self.state = TrainState(**json.loads(meta["state"]))
        self._reserve()
        return True

    # --- the loop ---------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        # linear decay over the last 80% of the run (warm start keeps early dead latents low)
        decay_from = int(0.2 * self.cfg.steps)
        if step < decay_from:
            return self.cfg.lr
        return self.cfg.lr * max(0.0, (self.cfg.steps - step) / max(1, self.cfg.steps - decay_from))

    def _init_from_data(self):
        first = next(self.store.batches(min(self.local_batch, 4096), self.cfg.seed, 0, self.shard_ids))[0]
        with torch.no_grad():
            self.sae.b_dec.copy_(geometric_median(first))
            # Scale the encoder so the first reconstruction has the data's scale (least squares).
            # With the encoder at the decoder's transpose, k latents each reading their own
            # direction overshoot badly when k is not small next to d_in (FVU 15 at d_in 64,
            # k 32); a positive scale leaves the TopK choice as it is and scales the values.
            xc = first - self.sae.b_dec
            rec = self.sae(first) - self.sae.b_dec
            scale = float((xc * rec).sum() / rec.pow(2).sum().clamp_min(1e-12))
            if scale > 0:
                self.sae.W_enc.mul_(scale)
                self.sae.b_enc.mul_(scale)
        if self.world_size > 1:  # every rank starts from rank 0's weights
            import torch.distributed as dist
            for p in self.sae.parameters():
                dist.broadcast(p.data, src=0)

    def _assign(self):
        stats = concept_statistics(self.sae, self.store, should_cancel=self.should_cancel)
        self.state.assignment = assign_latents(stats.scores(), stats.names, stats.concepts)
        self._reserve()

    def _reserve(self):
        if self.cfg.reserve_concept_latents and self.state.assignment:
            self.sae.set_reserved(self.state.assignment.values())

    def _batches(self):
        while True:
            for batch in self.store.batches(self.local_batch, self.cfg.seed, self.state.epoch, self.shard_ids,
                                            skip=self.state.batch_in_epoch):
                self.state.batch_in_epoch += 1  # counted before use: a checkpoint never replays a batch
                yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def _cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())

    def train(self) -> TopKSAE:
        cfg = self.cfg
        if self.state.step == 0:
            self._init_from_data()
        assign_step = int(cfg.assign_after * cfg.steps) if self.supervised else None
        names = self.store.concept_names
        t0 = time.perf_counter()
        seconds_before = self.state.seconds
        tokens = 0
        stream = self._batches()
        scores = None  # the encoder-score buffer, kept across steps
        while self.state.step < cfg.steps:
            if self._cancelled():
                self.save_checkpoint()
                raise TrainingCancelled()
            if assign_step is not None and self.state.step >= assign_step and not self.state.assignment:
                scores = None  # the statistics pass needs its own memory
                self._assign()
            x, _, pids = next(stream)
            if scores is None:
                scores = x.new_empty(x.shape[0], self.sae.n_latents)
            for g in self.opt.param_groups:
                g["lr"] = self._lr_at(self.state.step)
            dead = self.since_fired > cfg.dead_tokens
            fired, fvu, aux = _sae_loss_terms(self.sae, x, cfg, dead, scores)
            loss = fvu + cfg.aux_coef * aux
            metrics = {}
            if self.state.assignment:
                assigned = torch.tensor([self.state.assignment[n] for n in names])
                labels = self.store.prompt_labels[pids]
                bce, mean_act, decor = _supervised_terms(self.sae, x, labels, assigned, self.obj_cols, self.sty_cols, cfg)
                loss = loss + cfg.bce * bce + cfg.mean_act * mean_act + cfg.decorrelation * decor
                metrics.update(bce=float(bce.detach()), decorrelation=float(decor.detach()))
            if not torch.isfinite(loss):
                # the last good checkpoint stays as it is: never overwrite it with NaNs
                raise SAEError(f"training diverged at step {self.state.step} (loss is {float(loss.detach())}); the last good "
                               f"checkpoint is kept in {self.work_dir}. Lower the learning rate and resume.")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self._reduce_grads()
            self.sae.remove_parallel_decoder_grad()
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sae.normalize_decoder()
            with torch.no_grad():
                n_tok = x.shape[0] * self.world_size
                self.since_fired += n_tok
                self.since_fired[self._all_fired(fired)] = 0
            tokens += x.shape[0]
            self.state.step += 1
            elapsed = time.perf_counter() - t0
            self.state.seconds = seconds_before + elapsed
            metrics.update(step=self.state.step, loss=float(loss.detach()), fvu=float(fvu.detach()), auxk=float(aux.detach()),
                           dead_fraction=float((self.since_fired > cfg.dead_tokens).float().mean()),
                           tokens_per_s=tokens * self.world_size / max(elapsed, 1e-9), lr=self._lr_at(self.state.step))
            if self.state.step % max(1, cfg.steps // 200) == 0 or self.state.step == cfg.steps:
                self.state.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()})
            if self.progress:
                self.progress(self.state.step, cfg.steps, metrics)
            if self.state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()
        return self.sae

    # --- distributed hooks (no-ops in one process) ----------------------------------------
    def _reduce_grads(self):
        if self.world_size > 1:
            import torch.distributed as dist
            for p in self.sae.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(self.world_size)

    def _all_fired(self, fired: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist
            f = fired.to(torch.int32)
            dist.all_reduce(f, op=dist.ReduceOp.MAX)
            return f.bool()
        return fired


def final_fvu(sae: TopKSAE, store: ActivationStore, max_tokens: int = 200_000) -> float:
    """FVU of per-token TopK (inference) on up to max_tokens stored vectors."""
    err, var, seen = 0.0, 0.0, 0
    s1 = torch.zeros(sae.d_in, dtype=torch.float64)
    s2 = 0.0
    shift = None
    with torch.no_grad():
        for acts, _, _ in store.iter_tokens():
            x_hat = sae(acts)
            # per-chunk float32 sums added up in float64 (no float64 copy of the chunk);
            # centring on the first chunk's mean keeps s2 - |s1|^2 / n well conditioned
            err += float((acts - x_hat).pow_(2).sum())
            if shift is None:
                shift = acts.mean(0)
            c = acts - shift
            s1 += c.sum(0).double()
            s2 += float(c.pow_(2).sum())
            seen += acts.shape[0]
            if seen >= max_tokens:
                break
    var = s2 - float(s1.pow(2).sum()) / max(seen, 1)
    return err / max(var, 1e-12)


def dead_fraction(sae: TopKSAE, store: ActivationStore, max_tokens: int = 200_000) -> float:
    fired = torch.zeros(sae.n_latents, dtype=torch.bool)
    seen = 0
    with torch.no_grad():
        for acts, _, _ in store.iter_tokens():
            fired[sae.encode(acts).indices.unique()] = True
            seen += acts.shape[0]
            if seen >= max_tokens:
                break
    return 1.0 - float(fired.float().mean())


def train_sae(store: ActivationStore, cfg: TrainConfig, work_dir: str, progress: Progress | None = None,
              should_cancel=None, restart_on_mismatch: bool = False) -> tuple[TopKSAE, ConceptIndex, dict]:
    """Train (or resume, when the work folder holds a checkpoint of the same settings), then
    build the concept index. Returns (sae, index, training record)."""
    trainer = Trainer(store, cfg, work_dir, progress, should_cancel, restart_on_mismatch=restart_on_mismatch)
    sae = trainer.train()
    for p in sae.parameters():
        p.requires_grad_(False)
    index = build_index(sae, store, cfg, trainer.state.assignment or None, should_cancel)
    return sae, index, training_record(trainer, sae)


def training_record(trainer: Trainer, sae: TopKSAE, **extra) -> dict:
    """What an SAE file records about its training (the node and the headless CLI alike)."""
    store, cfg, state = trainer.store, trainer.cfg, trainer.state
    return {"config": asdict(cfg), "tokens_seen": state.step * cfg.batch_size,
            "stored_tokens": store.n_tokens, "prompts": [p.text for p in store.prompts],
            "fvu": round(final_fvu(sae, store), 5), "dead_fraction": round(dead_fraction(sae, store), 5),
            "seconds": round(state.seconds, 2), "supervised": bool(state.assignment),
            "history": state.history[-200:], "resumed": trainer.resumed, **extra}
