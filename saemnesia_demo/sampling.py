"""Plain-torch noise schedule and DDIM sampler (with classifier-free guidance).

The schedule is SD1's: 1000 discrete steps, ``betas = linspace(sqrt(0.00085), sqrt(0.012))**2``
(diffusers "scaled_linear", ComfyUI "linear"); the model predicts epsilon.
"""

from __future__ import annotations

from typing import Callable

import torch


def alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def ddim_timesteps(steps: int, num_train: int = 1000) -> list[int]:
    """Evenly spaced, descending, ending at 0-ish: like diffusers "leading" + offset 1."""
    ratio = num_train // steps
    return [int(t) for t in reversed(range(1, num_train, ratio))][:steps]


def seed_noise(seeds: list[int], shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    """Starting noise, one draw per seed: a sample does not depend on the batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def unet_eps_fn(unet) -> EpsFn:
    def fn(x, t, context):
        return unet(x, t, encoder_hidden_states=context).sample

    return fn


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn | torch.nn.Module,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    steps: int = 25,
    cfg: float = 4.0,
    seeds: list[int] | None = None,
    shape: tuple[int, int, int] = (3, 32, 32),
    acp: torch.Tensor | None = None,
    clip: bool = True,
    generator_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM (eta 0) from pure noise. ``cond [B,T,D]``; ``uncond [1 or B,T,D]`` (None: no CFG).

    Each sample's starting noise comes from its own seed (``seeds[i]``, default ``i``),
    so a sample does not depend on the batch it is in. Returns ``[B,3,32,32]`` in [-1, 1].
    """
    if isinstance(eps_fn, torch.nn.Module):
        eps_fn = unet_eps_fn(eps_fn)
    b = cond.shape[0]
    acp = alphas_cumprod() if acp is None else acp
    if generator_noise is not None:
        x = generator_noise.clone().float()
    else:
        x = seed_noise(list(range(b)) if seeds is None else seeds, shape)
    ts = ddim_timesteps(steps, len(acp))
    use_cfg = uncond is not None and cfg != 1.0
    if use_cfg:
        ctx = torch.cat([cond, uncond.expand(b, -1, -1)])
    for i, t in enumerate(ts):
        a_t = acp[t]
        a_prev = acp[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        tt = torch.full((b,), t, dtype=torch.long)
        if use_cfg:
            e = eps_fn(torch.cat([x, x]), torch.cat([tt, tt]), ctx)
            e_c, e_u = e.chunk(2)
            eps = e_u + cfg * (e_c - e_u)
        else:
            eps = eps_fn(x, tt, cond)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.clamp(-1, 1)
