"""MiniCanvas: a seeded generator of tiny (32x32 RGB) images of objects in styles.

A small analogue of UnlearnCanvas for CPU-sized experiments: every image shows one
object (a shape) drawn in one style (a fill pattern with its own palette). The prompt
is ``"a {object} in {style} style"``; labels are ``(object index, style index)``.

Design choices, made so that a tiny diffusion model can learn the classes and a small
classifier can tell them apart at 32x32:

* objects are large (about half to three quarters of the canvas) with moderate
  rotation, so a square never turns into a diamond and a cross stays a plus sign;
* every style has its own palette as well as its own pattern (as art styles do), and
  patterns are coarse (stripes 6 px, checker cells 4 px, dots on a 5 px grid);
* shapes are rendered 4x supersampled and averaged down, so edges are anti-aliased;
* the background is a light, slightly tinted, near-uniform colour.

Everything is pure torch + numpy; randomness comes from a ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32
_SS = 4  # supersampling factor
_HI = SIZE * _SS

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "heart")
STYLES: tuple[str, ...] = ("solid", "stripes", "dots", "checker", "outline", "gradient")

# Two colours per style (RGB in [0, 1]): the pattern alternates between them.
_PALETTES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "solid": ((0.85, 0.12, 0.10), (0.85, 0.12, 0.10)),  # red
    "stripes": ((0.10, 0.25, 0.80), (0.98, 0.85, 0.15)),  # blue / yellow
    "dots": ((0.10, 0.55, 0.20), (0.95, 0.95, 0.90)),  # green with white dots
    "checker": ((0.05, 0.05, 0.05), (0.95, 0.55, 0.05)),  # black / orange
    "outline": ((0.45, 0.10, 0.55), (0.45, 0.10, 0.55)),  # purple border only
    "gradient": ((0.95, 0.20, 0.65), (0.05, 0.70, 0.85)),  # magenta -> cyan
}


def prompt_for(obj: int | str, style: int | str) -> str:
    """The prompt for an (object, style) pair, given by index or by name."""
    o = OBJECTS[obj] if isinstance(obj, int) else obj
    s = STYLES[style] if isinstance(style, int) else style
    if o not in OBJECTS or s not in STYLES:
        raise ValueError(f"unknown object/style: {obj!r}/{style!r}")
    return f"a {o} in {s} style"


def all_prompts() -> list[tuple[int, int, str]]:
    """Every (object index, style index, prompt), objects major."""
    return [(o, s, prompt_for(o, s)) for o in range(len(OBJECTS)) for s in range(len(STYLES))]


def parse_prompt(prompt: str) -> tuple[int, int]:
    """Inverse of :func:`prompt_for` (labels from how prompts are built)."""
    words = prompt.strip().split()
    if len(words) != 5 or words[0] != "a" or words[2] != "in" or words[4] != "style":
        raise ValueError(f"not a MiniCanvas prompt: {prompt!r}")
    return OBJECTS.index(words[1]), STYLES.index(words[3])


# ---------------------------------------------------------------------------
# shapes: boolean masks on local coordinates (u right, v up, roughly in [-1, 1])


def _polygon(u: torch.Tensor, v: torch.Tensor, pts: Sequence[tuple[float, float]]) -> torch.Tensor:
    """Inside test for a convex polygon given counter-clockwise."""
    inside = torch.ones_like(u, dtype=torch.bool)
    n = len(pts)
    for i in range(n):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % n]
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _shape_mask(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if name == "circle":
        return u * u + v * v <= 0.92**2
    if name == "square":
        return (u.abs() <= 0.78) & (v.abs() <= 0.78)
    if name == "triangle":
        return _polygon(u, v, [(-0.95, -0.72), (0.95, -0.72), (0.0, 0.95)])
    if name == "cross":
        arm, length = 0.30, 0.95
        return ((u.abs() <= arm) & (v.abs() <= length)) | ((v.abs() <= arm) & (u.abs() <= length))
    if name == "star":
        # five-pointed star: union of the inner pentagon and five spike triangles
        outer, inner = 1.0, 0.42
        angs = [math.pi / 2 + k * 2 * math.pi / 5 for k in range(5)]
        tips = [(outer * math.cos(a), outer * math.sin(a) - 0.08) for a in angs]
        vals = [(inner * math.cos(a + math.pi / 5), inner * math.sin(a + math.pi / 5) - 0.08) for a in angs]
        mask = _polygon(u, v, vals)
        for k in range(5):
            # spike k: tip k between valleys k-1 and k (counter-clockwise)
            mask |= _polygon(u, v, [vals[k - 1], tips[k], vals[k]])
        return mask
    if name == "heart":
        x = u * 1.15
        y = v * 1.15 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(name)


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    m = (~mask).float()[None, None]
    grown = F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0] < 0.5


# ---------------------------------------------------------------------------


def _jitter_colour(c, rng: np.random.Generator, amount: float = 0.06) -> torch.Tensor:
    arr = np.clip(np.asarray(c) + rng.uniform(-amount, amount, 3), 0.0, 1.0)
    return torch.tensor(arr, dtype=torch.float32)


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    # pixel centres of the supersampled grid in canvas coords [-1, 1], y up
    t = (torch.arange(_HI, dtype=torch.float32) + 0.5) / _HI * 2 - 1
    yy, xx = torch.meshgrid(-t, t, indexing="ij")
    return xx, yy


_XX, _YY = _grid()


def render(obj: int, style: int, rng: np.random.Generator, background: str = "light") -> torch.Tensor:
    """Render one image: float tensor ``[3, 32, 32]`` in ``[-1, 1]``.

    ``background="light"`` (the data the diffusion model learns) draws a light, slightly
    tinted background; ``"wide"`` any colour with channels in [0.3, 0.95] (used to make
    the classifiers ignore the background, which a diffusion model's samples get wrong).
    """
    oname, sname = OBJECTS[obj], STYLES[style]
    scale = rng.uniform(0.52, 0.78)  # shape radius as a fraction of the half canvas
    rot = math.radians(rng.uniform(-15.0, 15.0))
    max_shift = 0.95 - scale
    cx, cy = rng.uniform(-max_shift, max_shift, 2)
    # local coordinates: inverse rotate + scale
    dx, dy = (_XX - cx) / scale, (_YY - cy) / scale
    c, s = math.cos(rot), math.sin(rot)
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = _shape_mask(oname, u, v)

    bg = np.clip(rng.uniform(0.78, 0.95) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    if background == "wide":
        bg = rng.uniform(0.3, 0.95, 3)
    elif background != "light":
        raise ValueError(f"background must be 'light' or 'wide', not {background!r}")
    bg_t = torch.tensor(bg, dtype=torch.float32)
    c1 = _jitter_colour(_PALETTES[sname][0], rng)
    c2 = _jitter_colour(_PALETTES[sname][1], rng)

    px = (_XX + 1) / 2 * SIZE  # canvas pixel coordinates
    py = (1 - _YY) / 2 * SIZE
    if sname == "solid":
        sel = torch.zeros_like(mask, dtype=torch.float32)
    elif sname == "stripes":
        period = 6.0
        phase = rng.uniform(0, period)
        sel = (((py + phase) % period) < period / 2).float()
    elif sname == "dots":
        period = 5.0
        ox, oy = rng.uniform(0, period, 2)
        ddx = (px + ox) % period - period / 2
        ddy = (py + oy) % period - period / 2
        sel = (ddx * ddx + ddy * ddy <= 1.3**2).float()
    elif sname == "checker":
        cell = 4.0
        ox, oy = rng.uniform(0, 2 * cell, 2)
        sel = ((torch.floor((px + ox) / cell) + torch.floor((py + oy) / cell)) % 2).float()
    elif sname == "outline":
        width = int(round(rng.uniform(1.6, 2.4) * _SS))
        mask = mask & ~_erode(mask, width)
        sel = torch.zeros_like(mask, dtype=torch.float32)
    elif sname == "gradient":
        # top-to-bottom ramp across the shape's own extent
        ys = _YY[mask] if bool(mask.any()) else _YY.flatten()
        top, bottom = float(ys.max()), float(ys.min())
        sel = ((top - _YY) / max(top - bottom, 1e-3)).clamp(0, 1)
    else:  # pragma: no cover
        raise ValueError(sname)

    fg = c1[:, None, None] * (1 - sel) + c2[:, None, None] * sel
    m = mask.float()
    img = bg_t[:, None, None] * (1 - m) + fg * m
    img = F.avg_pool2d(img[None], _SS)[0]
    # faint sensor-like noise on everything
    img = img + torch.from_numpy(rng.normal(0.0, 0.01, img.shape).astype(np.float32))
    return (img.clamp(0, 1) * 2 - 1).contiguous()


def make_dataset(n: int, seed: int, balanced: bool = True, background: str = "light"):
    """``n`` images with labels. Returns ``(images [n,3,32,32] in [-1,1], objects [n], styles [n])``.

    With ``balanced`` the (object, style) pairs cycle through all combinations in a
    seeded random order, so every pair appears ``n // 36`` or ``n // 36 + 1`` times.
    """
    rng = np.random.default_rng(seed)
    n_pairs = len(OBJECTS) * len(STYLES)
    if balanced:
        pairs = np.concatenate([rng.permutation(n_pairs) for _ in range((n + n_pairs - 1) // n_pairs)])[:n]
    else:
        pairs = rng.integers(0, n_pairs, n)
    objs = torch.from_numpy(pairs // len(STYLES)).long()
    styles = torch.from_numpy(pairs % len(STYLES)).long()
    imgs = torch.empty(n, 3, SIZE, SIZE)
    for i in range(n):
        imgs[i] = render(int(objs[i]), int(styles[i]), rng, background)
    return imgs, objs, styles


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float images to uint8 ``[0, 255]`` (compact storage)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0
