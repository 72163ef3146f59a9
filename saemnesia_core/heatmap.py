"""Activation heatmaps: a latent's activation over the feature map, upsampled onto a picture."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# A perceptual dark-blue -> magenta -> orange -> yellow ramp (anchor colours, linearly blended).
_RAMP = torch.tensor([[0.05, 0.03, 0.20], [0.45, 0.07, 0.50], [0.85, 0.25, 0.30], [0.98, 0.60, 0.10], [0.99, 0.95, 0.50]])


def colorize(values: torch.Tensor) -> torch.Tensor:
    """values in [0,1], any shape -> same shape + [3] RGB."""
    v = values.clamp(0, 1) * (len(_RAMP) - 1)
    lo = v.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (v - lo).unsqueeze(-1)
    return _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac


def overlay(image: torch.Tensor, act_map: torch.Tensor, alpha: float = 0.55, vmax: float | None = None) -> torch.Tensor:
    """image [B,H,W,3] in 0..1 (ComfyUI IMAGE), act_map [B,h,w] >= 0 -> [B,H,W,3].

    Each map is scaled by `vmax` (default: the largest value over the batch, so images in a
    batch are comparable); zero activation leaves the picture visible but dimmed."""
    b, H, W, _ = image.shape
    m = act_map.float().unsqueeze(1)
    m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False).squeeze(1).clamp_min(0)
    scale = float(vmax) if vmax else float(m.max())
    norm = m / scale if scale > 0 else torch.zeros_like(m)
    heat = colorize(norm)
    weight = (alpha * norm.clamp(0, 1) ** 0.5).unsqueeze(-1)
    base = image.float() * (1 - alpha * 0.5)
    return (base * (1 - weight) + heat * weight).clamp(0, 1)
