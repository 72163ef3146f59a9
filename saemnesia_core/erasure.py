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

from .sae import TopKSAE


@dataclass
class ErasureTarget:
    """The latents to act on at one timestep, with per-latent numbers (all [L])."""

    latents: torch.Tensor  # long
    threshold: torch.Tensor  # a latent "fires" above this
    concept_mean: torch.Tensor  # ablation target scale
    multiplier: torch.Tensor

    def to(self, device):
        return ErasureTarget(self.latents.to(device), self.threshold.to(device),
                             self.concept_mean.to(device), self.multiplier.to(device))

    def __len__(self):
        return int(self.latents.numel())


def _matches(code_indices: torch.Tensor, target: ErasureTarget) -> torch.Tensor:
    """[T, k, L] bool: slot j of token t holds target latent l."""
    return code_indices.unsqueeze(-1) == target.latents.view(1, 1, -1)


def _apply_value_change(x: torch.Tensor, sae: TopKSAE, indices: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + decode(z + delta) - decode(z), computed only on the rows where delta is non-zero."""
    rows = (delta != 0).any(-1).nonzero(as_tuple=True)[0]
    out = x.clone()
    if rows.numel():
        change = F.embedding_bag(indices[rows], sae.W_dec, per_sample_weights=delta[rows].to(sae.W_dec.dtype), mode="sum")
        out[rows] += change.to(x.dtype)
    return out


def ablate(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget, strength: float = 1.0) -> torch.Tensor:
    """SAeUron: where a selected latent fires above its cross-concept mean, move it to
    multiplier * (its mean activation on the concept); strength blends from 0 (no change) to 1."""
    if len(target) == 0 or strength == 0:
        return x
    code = sae.encode(x)
    m = _matches(code.indices, target)
    fires = m & (code.values.unsqueeze(-1) > target.threshold.view(1, 1, -1))
    new_value = (target.multiplier * target.concept_mean).to(code.values.dtype)
    delta = (fires * (new_value.view(1, 1, -1) - code.values.unsqueeze(-1))).sum(-1) * strength
    return _apply_value_change(x, sae, code.indices, delta)


def scale_neurons(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget, strength: float = 1.0) -> torch.Tensor:
    """SAEmnesia: the concept's own latent, wherever it is active, times the multiplier."""
    if len(target) == 0 or strength == 0:
        return x
    code = sae.encode(x)
    m = _matches(code.indices, target) & (code.values.unsqueeze(-1) > 0)
    factor = (target.multiplier - 1.0).to(code.values.dtype).view(1, 1, -1)
    delta = (m * factor * code.values.unsqueeze(-1)).sum(-1) * strength
    return _apply_value_change(x, sae, code.indices, delta)


def detect(x: torch.Tensor, sae: TopKSAE, target: ErasureTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the concept is: (mask [T] bool, strength [T]) from the target latents' activations
    under per-token TopK, each compared with its firing threshold."""
    code = sae.encode(x)
    acts = (code.values.unsqueeze(-1) * _matches(code.indices, target)).sum(1)  # [T, L]
    over = acts - target.threshold.to(acts.dtype).view(1, -1)
    return (over > 0).any(-1), over.clamp_min(0).sum(-1)


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
