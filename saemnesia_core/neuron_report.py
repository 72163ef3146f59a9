"""What a latent or a concept does on one feature map: maps and text summaries."""
from __future__ import annotations

import torch

from .checkpoint import LoadedSAE
from .concepts import Concept
from .intervention import concept_latents, resolve_entry


def latents_for(loaded: LoadedSAE, spec: str | int | Concept, timestep: float) -> list[int]:
    """spec: an entry of the concepts text (see resolve_spec), a raw latent index or a Concept."""
    c = resolve_entry(loaded.index, spec, loaded.sae.n_latents)
    return [c] if isinstance(c, int) else concept_latents(c, loaded.index.bucket(timestep))


def activation_map(loaded: LoadedSAE, h: torch.Tensor, spec: str | int | Concept, timestep: float) -> tuple[torch.Tensor, list[int]]:
    """h [B,C,H,W] block output -> ([B,H,W] summed activation of the latents, the latents)."""
    latents = latents_for(loaded, spec, timestep)
    b, c, hh, ww = h.shape
    tokens = h.permute(0, 2, 3, 1).reshape(-1, c).float()
    acts = loaded.sae.latent_activations(tokens, torch.tensor(latents))
    return acts.sum(-1).view(b, hh, ww), latents


def _map_stats(act: torch.Tensor) -> str:
    active = float((act > 0).float().mean()) * 100
    return (f"strongest activation {float(act.max()):.3g} (the top of the heatmap's scale), mean {float(act.mean()):.3g}, "
            f"active at {active:.0f}% of positions")


SCORE_NOTE = ("Score (SAeUron): the latent's share of all activation on this concept's prompts minus its share "
              "on the other prompts; above 0 = fires more for this concept, the higher the more specific.")


def describe_latent(loaded: LoadedSAE, latent: int, act: torch.Tensor, timestep: float, where: str | None = None) -> str:
    """`where` says the moment in the user's terms (e.g. "step 12 of 25"); the model's
    internal timestep is the fallback."""
    where = where or f"timestep {timestep:.0f}"
    idx = loaded.index
    b = idx.bucket(timestep)
    ranked = []
    for c in idx.concepts.values():
        if c.latent == latent:
            ranked.append((float("inf"), c.name, "its dedicated latent"))
            continue
        if c.selections:
            sel = c.selections[min(b, len(c.selections) - 1)]
            if latent in sel.latents:
                j = sel.latents.index(latent)
                ranked.append((sel.scores[j], c.name, f"score {sel.scores[j]:.3g}"))
    ranked.sort(reverse=True)
    lines = [f"Latent {latent} at {where}: {_map_stats(act)}."]
    if ranked:
        lines.append("Concepts that use it: " + "; ".join(f"{n} ({why})" for _, n, why in ranked[:5]))
        if any(why.startswith("score") for _, _, why in ranked[:5]):
            lines.append(SCORE_NOTE)
    else:
        lines.append("No concept in this SAE's index uses this latent at this step.")
    return "\n".join(lines)


def describe_concept(loaded: LoadedSAE, name: str, latents: list[int], act: torch.Tensor, timestep: float,
                     where: str | None = None) -> str:
    where = where or f"timestep {timestep:.0f}"
    c = loaded.index.get(name)
    b = loaded.index.bucket(timestep)
    lines = [f"Concept '{c.name}' ({c.kind}) at {where}: {_map_stats(act)}."]
    if c.latent is not None:
        lines.append(f"Shown: its dedicated latent {c.latent} (SAEmnesia: trained to fire only for '{c.name}').")
    if c.selections:
        sel = c.selections[min(b, len(c.selections) - 1)]
        order = sorted(range(len(sel.latents)), key=lambda i: -sel.scores[i])
        shown = "Its latents" if c.latent is not None else "Shown: the sum of its latents"
        lines.append(f"{shown} at this step, most specific first: "
                     + ", ".join(f"{sel.latents[i]} (score {sel.scores[i]:.3g})" for i in order[:8]))
        lines.append(SCORE_NOTE)
    return "\n".join(lines)
