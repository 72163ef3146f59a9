"""Small synthetic data with known structure for core tests: each concept adds its own
direction to the token vectors, so a good SAE must find one latent per concept."""
import torch

from saemnesia_core.activations import ActivationWriter
from saemnesia_core.prompts import build_prompts

OBJECTS = ["cat", "dog", "car"]
STYLES = ["ink", "oil"]


def concept_directions(d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(d, generator=g) * 3 for n in OBJECTS + STYLES}


def write_store(folder, d=32, tokens_per=96, timesteps=(900.0, 500.0, 100.0), seed=0, shard_tokens=1024):
    dirs = concept_directions(d, seed)
    prompts = build_prompts(OBJECTS, STYLES)
    g = torch.Generator().manual_seed(seed + 1)
    w = ActivationWriter(folder, d, prompts, hook_point="output_blocks.4.1", shard_tokens=shard_tokens)
    for t in timesteps:
        for i, p in enumerate(prompts):
            base = sum(dirs[n] for n in p.labels)
            # the object sits on half the positions, the style everywhere
            x = torch.randn(tokens_per, d, generator=g) * 0.5 + dirs[[n for n, k in p.labels.items() if k == "style"][0]]
            obj = [n for n, k in p.labels.items() if k == "object"][0]
            x[: tokens_per // 2] += dirs[obj]
            del base
            w.add(x, t, i)
    return w.close(), dirs
