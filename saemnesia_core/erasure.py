"""The three erasure modes, as pure functions on activations.

x is [tokens, channels] (ablate, neuron) or [maps, positions, channels] (replace), the
output of the hooked transformer block with every spatial position one token. Each mode
returns an edited copy; tokens the concept does not touch come back bit-identical, because
only the change of the decoded code is added (decode(z') - decode(z)), never the
reconstruction itself: the SAE's reconstruction error stays in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .handover import handover_moves
from .sae import TopKSAE


@dataclass
class ErasureTarget:
    """The latents to act on at one timestep, with per-latent numbers (all [L])."""

    latents: torch.Tensor  # long
    threshold: torch.Tensor  # a latent "fires" above this
    concept_mean: torch.Tensor  # ablation target scale
    multiplier: torch.Tensor
    anchors: torch.Tensor | None = None  # long [L]: latent that takes over each one's activation (-1: none)
    # [L, d_in]: the anchor's mean state minus the concept's, where the index has both (else 0 rows,
    # and the anchor's decoder direction is used)
    shifts: torch.Tensor | None = None
    shifted: torch.Tensor | None = None  # bool [L]: which rows of shifts are real (set once, not per step)
    # [L, d_in + 1, d_in]: handover maps to the anchor (saemnesia_core.handover; zero where none),
    # applied first; the latent and the shift then act on what the latent still sees
    maps: torch.Tensor | None = None
    mapped: torch.Tensor | None = None  # bool [L]: which rows of maps are real

    def __post_init__(self):
        if self.shifts is not None and self.shifted is None:
            self.shifted = self.shifts.abs().sum(1) > 0
        if self.maps is not None and self.mapped is None:
            self.mapped = self.maps.flatten(1).abs().sum(1) > 0

    def to(self, device):
        def moved(t):
            return None if t is None else t.to(device)
        return ErasureTarget(self.latents.to(device), self.threshold.to(device), self.concept_mean.to(device),
                             self.multiplier.to(device), moved(self.anchors), moved(self.shifts), moved(self.shifted),
                             moved(self.maps), moved(self.mapped))

    def __len__(self):
        return int(self.latents.numel())

    def with_threshold(self, value: float) -> "ErasureTarget":
        return ErasureTarget(self.latents, torch.full_like(self.threshold, value), self.concept_mean, self.multiplier,
                             self.anchors, self.shifts, self.shifted, self.maps, self.mapped)


def selected_activations(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations of the target latents under per-token TopK (reserved latents: wherever
    positive), computed sparsely.

    Returns (rows, acts): the token rows where some target latent can fire (its ReLU
    pre-activation is above its threshold), and [len(rows), L] activations there, 0 where
    the latent is not among the token's top k. Only those rows pay for the full encode
    that decides top-k membership: on the rest the result is 0 by construction.
    """
    W = sae.W_enc[target.latents]
    pre = F.relu(F.linear(x - sae.b_dec, W, sae.b_enc[target.latents]))  # [T, L]
    thr = target.threshold.to(pre.dtype).clamp_min(0).view(1, -1)
    rows = (pre > thr).any(1).nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return rows, pre.new_zeros(0, len(target))
    kth = sae.competing(sae.pre_activations(x[rows])).topk(sae.k, dim=-1).values[:, -1:]
    cand = pre[rows]
    kept = (cand >= kth) | sae.is_reserved(target.latents).view(1, -1)
    return rows, cand * kept


def _apply_delta(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget, rows: torch.Tensor, delta: torch.Tensor):
    """x + (change of the target latents' values) @ W_dec: decode(z') - decode(z), on `rows` only."""
    if rows.numel() == 0:
        return x  # nothing fired: no copy
    out = x.clone()
    out[rows] += (delta.to(sae.W_dec.dtype) @ sae.W_dec[target.latents]).to(x.dtype)
    return out


def ablate(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget, strength: float = 1.0) -> torch.Tensor:
    """SAeUron: where a selected latent fires above its cross-concept mean, move it to
    multiplier * (its mean activation on the concept); strength blends from 0 (no change) to 1."""
    if len(target) == 0 or strength == 0:
        return x
    rows, acts = selected_activations(x, sae, target)
    fires = acts > target.threshold.to(acts.dtype).view(1, -1)
    new_value = (target.multiplier * target.concept_mean).to(acts.dtype).view(1, -1)
    return _apply_delta(x, sae, target, rows, fires * (new_value - acts) * strength)


# an anchor's share at a token is the concept latent's activation over its mean on the concept,
# capped: a token where the latent fires far above its usual value is not moved further for it
ANCHOR_SHARE_MAX = 2.0


def scale_neurons(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget, strength: float = 1.0,
                  positions_per_map: int | None = None) -> torch.Tensor:
    """SAEmnesia: the concept's own latent, wherever it is active, times the multiplier.

    With a handover map to the anchor (text states; saemnesia_core.handover), each token first
    moves by the map's prediction of the same prompt naming the anchor, gated by the latent's
    activation over its mean (at most 1). What the latent still sees afterwards (a wording the
    map was not fitted on) is erased as below, on the moved states.

    With an anchor, the token also moves towards the anchor concept, by as much as the concept
    is present there: by the difference of the two concepts' mean states where the index has
    them (a move between states the model itself produces, so the picture stays in distribution),
    else by the anchor latent's decoder direction (z_anchor += z_concept).

    positions_per_map: x holds maps of this many consecutive rows (a prompt's tokens), and the
    move to the anchor's state is judged per map, by its strongest row, and made at every row.
    A prompt names its concept once, but a text encoder spreads it over all tokens: in a wording
    the SAE was not trained on, the latent fires strongly on the concept's word and weakly
    elsewhere, while the model reads the concept from every token."""
    if len(target) == 0 or strength == 0:
        return x
    if target.maps is not None and bool(target.mapped.any()):
        x = _hand_over(x, sae, target, strength, positions_per_map)
    rows, acts = selected_activations(x, sae, target.with_threshold(0.0))
    factor = (target.multiplier - 1.0).to(acts.dtype).view(1, -1)
    out = _apply_delta(x, sae, target, rows, factor * acts * strength)
    if target.anchors is None or not rows.numel() or not bool((target.anchors >= 0).any()):
        return out
    has = target.anchors >= 0
    by_state = has & target.shifted if target.shifted is not None else torch.zeros_like(has)
    by_decoder = has & ~by_state
    if by_decoder.any():
        gain = (acts[:, by_decoder] * strength).to(sae.W_dec.dtype)
        out[rows] += (gain @ sae.W_dec[target.anchors[by_decoder]]).to(x.dtype)
    if by_state.any():
        mean = target.concept_mean[by_state].to(acts.dtype).clamp_min(1e-6).view(1, -1)
        share = (acts[:, by_state] / mean).clamp(0, ANCHOR_SHARE_MAX) * strength
        shifts = target.shifts[by_state].to(share.dtype)
        if positions_per_map:
            per_row = share.new_zeros(x.shape[0], share.shape[1])
            per_row[rows] = share
            per_map = per_row.view(-1, positions_per_map, share.shape[1]).amax(1, keepdim=True)
            out += (per_map @ shifts).to(x.dtype).expand(-1, positions_per_map, -1).reshape(x.shape)
        else:
            out[rows] += (share @ shifts).to(x.dtype)
    return out


# a map predicts the whole move to the anchor's prompt: where the latent fires above its mean the
# prompt moves no further (a cap of 2 broke pictures on validation seeds and erased no more)
HANDOVER_GATE_MAX = 1.0


def _hand_over(x, sae: TopKSAE, target: ErasureTarget, strength: float, positions_per_map: int | None):
    """x plus each mapped latent's handover move, gated by the concept's presence: its activation
    over its mean on the concept, capped at 1 (per map: its strongest row); x itself where no
    mapped latent fires."""
    mapped = target.mapped
    sub = ErasureTarget(target.latents[mapped], torch.zeros_like(target.threshold[mapped]),
                        target.concept_mean[mapped], target.multiplier[mapped])
    rows, acts = selected_activations(x, sae, sub)
    if rows.numel() == 0:
        return x
    share = (acts / sub.concept_mean.to(acts.dtype).clamp_min(1e-6).view(1, -1)).clamp(0, HANDOVER_GATE_MAX) * strength
    per_row = share.new_zeros(x.shape[0], share.shape[1])
    per_row[rows] = share
    if positions_per_map:
        per_row = per_row.view(-1, positions_per_map, share.shape[1]).amax(1, keepdim=True) \
            .expand(-1, positions_per_map, -1).reshape(x.shape[0], -1)
    moving = (per_row > 0).any(1).nonzero(as_tuple=True)[0]
    if moving.numel() == 0:
        return x
    out = x.clone()
    out[moving] += handover_moves(x[moving], target.maps[mapped], per_row[moving])
    return out


def detect(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the concept is: (mask [T] bool, strength [T]) from the target latents' activations
    under per-token TopK, each compared with its firing threshold."""
    mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    score = x.new_zeros(x.shape[0])
    rows, acts = selected_activations(x, sae, target)
    if rows.numel():
        over = acts - target.threshold.to(acts.dtype).view(1, -1)
        mask[rows] = (over > 0).any(-1)
        score[rows] = over.clamp_min(0).sum(-1).to(score.dtype)
    return mask, score


def replace(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget, strength: float = 1.0,
            generator: torch.Generator | None = None, donor_fraction: float = 0.25) -> torch.Tensor:
    """PER (detect and replace): positions where the concept is detected get the activation
    vector of a randomly drawn undetected position of the same feature map. No latent is
    steered, so every written vector is one the model itself produced for this image.

    x: [maps, positions, channels]. If a map is detected everywhere, the donors are its
    `donor_fraction` least-detected positions.
    """
    if len(target) == 0 or strength == 0:
        return x
    b, n, c = x.shape
    mask, score = detect(x.reshape(b * n, c), sae, target)
    mask, score = mask.view(b, n), score.view(b, n)
    if not mask.any():
        return x  # nothing detected: no copy
    out = x.clone()
    for i in torch.nonzero(mask.any(1), as_tuple=True)[0].tolist():
        det = mask[i]
        donors = torch.nonzero(~det, as_tuple=True)[0]
        if donors.numel() == 0:
            donors = score[i].argsort()[: max(1, int(n * donor_fraction))]
        where = torch.nonzero(det, as_tuple=True)[0]
        pick = torch.randint(0, donors.numel(), (where.numel(),), generator=generator, device="cpu")
        src = x[i, donors[pick.to(donors.device)]]
        out[i, where] = x[i, where] + strength * (src - x[i, where]) if strength != 1 else src
    return out
