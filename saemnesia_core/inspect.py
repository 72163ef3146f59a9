"""What a latent or a concept does on one feature map: maps and text summaries."""
from __future__ import annotations

import torch

from .checkpoint import LoadedSAE
from .concepts import Concept
from .errors import SAEError
from .intervention import resolve_spec


def latents_for(loaded: LoadedSAE, spec: str | int | Concept, timestep: float) -> list[int]:
    """spec: an entry of the concepts text (see resolve_spec), a raw latent index or a Concept."""
    c = resolve_spec(loaded.index, spec) if isinstance(spec, str) else spec
    if isinstance(c, int):
        if not 0 <= c < loaded.sae.n_latents:
            raise SAEError(f"latent {c} does not exist: this SAE has latents 0..{loaded.sae.n_latents - 1}.")
        return [c]
    if c.latent is not None:
        return [c.latent]
    return list(c.selections[loaded.index.bucket(timestep)].latents)


def activation_map(loaded: LoadedSAE, h: torch.Tensor, spec: str | int | Concept, timestep: float) -> tuple[torch.Tensor, list[int]]:
    """h [B,C,H,W] block output -> ([B,H,W] summed activation of the latents, the latents)."""
    latents = latents_for(loaded, spec, timestep)
    b, c, hh, ww = h.shape
    tokens = h.permute(0, 2, 3, 1).reshape(-1, c).float()
    acts = loaded.sae.latent_activations(tokens, torch.tensor(latents))
    return acts.sum(-1).view(b, hh, ww), latents


def _map_stats(act: torch.Tensor) -> str:
    active = float((act > 0).float().mean()) * 100
    return f"max {float(act.max()):.3g}, mean {float(act.mean()):.3g}, active at {active:.0f}% of positions"


def describe_latent(loaded: LoadedSAE, latent: int, act: torch.Tensor, timestep: float) -> str:
    idx = loaded.index
    b = idx.bucket(timestep)
    ranked = []
    for c in idx.concepts.values():
        if c.latent == latent:
            ranked.append((float("inf"), c.name, "dedicated latent"))
            continue
        if c.selections:
            sel = c.selections[min(b, len(c.selections) - 1)]
            if latent in sel.latents:
                j = sel.latents.index(latent)
                ranked.append((sel.scores[j], c.name, f"score {sel.scores[j]:.3g}"))
    ranked.sort(reverse=True)
    lines = [f"Latent {latent} at timestep {timestep:.0f}: {_map_stats(act)}."]
    if ranked:
        lines.append("Top concepts for this latent: " + "; ".join(f"{n} ({why})" for _, n, why in ranked[:5]))
    else:
        lines.append("No concept in this SAE's index uses this latent at this timestep.")
    return "\n".join(lines)


def describe_concept(loaded: LoadedSAE, name: str, latents: list[int], act: torch.Tensor, timestep: float) -> str:
    c = loaded.index.get(name)
    b = loaded.index.bucket(timestep)
    lines = [f"Concept '{c.name}' ({c.kind}) at timestep {timestep:.0f}: {_map_stats(act)}."]
    if c.latent is not None:
        lines.append(f"Dedicated latent (SAEmnesia): {c.latent}.")
    if c.selections:
        sel = c.selections[min(b, len(c.selections) - 1)]
        order = sorted(range(len(sel.latents)), key=lambda i: -sel.scores[i])
        lines.append("Top latents: " + ", ".join(f"{sel.latents[i]} (score {sel.scores[i]:.3g})" for i in order[:8]))
    return "\n".join(lines)
