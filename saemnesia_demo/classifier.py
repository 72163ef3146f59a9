"""Small CNN classifiers for MiniCanvas objects and styles (the benchmark's judges).

Two independent networks (one per kind, as UnlearnCanvas has a style and an object
classifier) stored together in one ``.safetensors`` file with prefixes ``object.`` and
``style.``; the safetensors metadata holds ``{"minicanvas_classifiers": JSON}`` with class
names, architecture width and the measured held-out accuracy. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "models" / "minicanvas" / "classifiers.safetensors"
META_KEY = "minicanvas_classifiers"


class SmallCNN(nn.Module):
    """conv-bn-relu x2, pool, x2, pool, x2, global average + max pool, linear."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w),
        )
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.head(h)


class MiniCanvasClassifiers(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.object = SmallCNN(len(data.OBJECTS), width)
        self.style = SmallCNN(len(data.STYLES), width)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [N,3,32,32] in [-1,1]`` -> ``(object index [N], style index [N])``."""
        was = self.training
        self.eval()
        objs, styles = [], []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].float().clamp(-1, 1)
            objs.append(self.object(x).argmax(1))
            styles.append(self.style(x).argmax(1))
        self.train(was)
        return torch.cat(objs), torch.cat(styles)


# ---------------------------------------------------------------------------
# augmentation: what a tiny diffusion model's samples look like (noise, blur, colour drift)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image gaussian blur (5x5 kernel), ``sigma [N]``; sigma 0 leaves the image."""
    r = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    s = sigma.clamp_min(1e-3)[:, None]
    k1 = torch.exp(-(r[None] ** 2) / (2 * s * s))
    k1 = k1 / k1.sum(1, keepdim=True)  # [N,5]
    n, c, h, w = x.shape
    xp = F.pad(x.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate")
    kh = k1.repeat_interleave(c, 0)[:, None, None, :]  # [N*C,1,1,5]
    kv = k1.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(xp, kh, groups=n * c)
    y = F.conv2d(y, kv, groups=n * c)
    return y.reshape(n, c, h, w)


def augment(x: torch.Tensor, gen: torch.Generator | None = None, strength: float = 1.0) -> torch.Tensor:
    n = x.shape[0]

    def u(*shape):
        return torch.rand(*shape, generator=gen)

    # random flip + small translation
    flip = u(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    x = torch.roll(x, (dy, dx), (2, 3))
    # colour jitter: brightness, contrast, per-channel shift
    b = (u(n, 1, 1, 1) - 0.5) * 0.2 * strength
    c = 1 + (u(n, 1, 1, 1) - 0.5) * 0.3 * strength
    ch = (u(n, 3, 1, 1) - 0.5) * 0.12 * strength
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean + b + ch
    # blur on about half
    sig = torch.where(u(n) < 0.5, u(n) * 1.0 * strength, torch.zeros(n))
    x = _gaussian_blur(x, sig)
    # gaussian noise (std up to 0.2 in [-1,1] units) + occasional low-frequency blotches
    std = u(n, 1, 1, 1) * 0.2 * strength
    x = x + torch.randn(x.shape, generator=gen) * std
    low = F.interpolate(torch.randn(n, 3, 4, 4, generator=gen), size=x.shape[-2:], mode="bilinear", align_corners=False)
    x = x + low * (u(n, 1, 1, 1) * 0.08 * strength)
    return x.clamp(-1, 1)


# ---------------------------------------------------------------------------
# safetensors I/O


def save_classifiers(model: MiniCanvasClassifiers, path: str | os.PathLike, meta: dict) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = {"width": model.width, "objects": list(data.OBJECTS), "styles": list(data.STYLES), **meta}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(full)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    return json.loads(md.get(META_KEY, "{}"))


def load_classifiers(path: str | os.PathLike | None = None) -> tuple[MiniCanvasClassifiers, dict]:
    from safetensors.torch import load_file

    path = Path(path or DEFAULT_PATH)
    meta = read_metadata(path)
    if meta.get("objects") != list(data.OBJECTS) or meta.get("styles") != list(data.STYLES):
        raise ValueError(f"{path}: classifier classes do not match MiniCanvas OBJECTS/STYLES")
    model = MiniCanvasClassifiers(int(meta.get("width", 32)))
    model.load_state_dict(load_file(str(path)))
    model.eval().requires_grad_(False)
    return model, meta
