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


def with_legend(heat: torch.Tensor, vmax: float, caption: str, min_width: int = 256) -> torch.Tensor:
    """heat [B,H,W,3] (from overlay) -> [B,H',W',3]: upscaled (nearest, so positions stay
    crisp) to at least `min_width` px, with a colour bar below labelled 0 .. `vmax` and a caption.

    Without it a 32 px heatmap is a few blurred pixels and its colours have no scale."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    b, h, w, _ = heat.shape
    f = max(1, -(-min_width // w))  # ceil: integer factor keeps every latent position square
    big = F.interpolate(heat.permute(0, 3, 1, 2).float(), scale_factor=f, mode="nearest").permute(0, 2, 3, 1)
    W = w * f
    fs = max(10, W // 22)
    try:
        font = ImageFont.load_default(size=fs)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    bar_h, pad = max(8, fs), max(3, fs // 3)
    panel = Image.new("RGB", (W, pad + bar_h + pad + fs + pad + fs + pad), (20, 20, 20))
    draw = ImageDraw.Draw(panel)
    ramp = (colorize(torch.linspace(0, 1, W)) * 255).round().byte().numpy()
    panel.paste(Image.fromarray(np.repeat(ramp[None], bar_h, 0)), (0, pad))
    y = pad + bar_h + pad
    draw.text((2, y), "0", fill=(230, 230, 230), font=font)
    top = f"{vmax:.3g}"
    draw.text((W - 2 - draw.textlength(top, font=font), y), top, fill=(230, 230, 230), font=font)
    mid = "activation"
    draw.text(((W - draw.textlength(mid, font=font)) / 2, y), mid, fill=(160, 160, 160), font=font)
    while caption and draw.textlength(caption, font=font) > W - 4:
        caption = caption[:-2] + "…" if len(caption) > 2 else ""
    draw.text((2, y + fs + pad), caption, fill=(230, 230, 230), font=font)
    legend = torch.from_numpy(np.asarray(panel, dtype=np.float32) / 255.0)
    return torch.cat([big, legend.unsqueeze(0).expand(b, -1, -1, -1).to(big.dtype)], dim=1)
