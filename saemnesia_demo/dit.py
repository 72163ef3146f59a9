"""MiniCanvas-DiT: the second demo model, a tiny text-to-image transformer in Flux's layout.

Joint attention as in Flux: `double_blocks` keep an image stream and a text stream with their
own weights and attend over both; `single_blocks` run on the text tokens and image tokens
concatenated (text first). Every parameter has the name and shape ComfyUI's own
``comfy.ldm.flux.model.Flux`` gives it, so the exported file loads there unchanged (checked by
``tests/test_minicanvas_dit.py``, which compares the two forwards). This module is plain torch:
the benchmark runs it without ComfyUI.

* pixel space, 3x32x32 in [-1, 1], patch 4 (an 8x8 grid of image tokens);
* text: the frozen MiniLM states of ``text_encoder.py`` ([B, 16, 384]) through ``txt_in``; text
  tokens carry position id 0, as Flux's do; no pooled vector (``vec_in_dim`` None, like Chroma);
* rectified flow: ``x_t = (1 - t) x0 + t noise`` and the model predicts ``noise - x0`` at
  ``timestep = t`` (ComfyUI's ``ModelSamplingFlux`` + ``CONST``), sampled with Euler.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .text_encoder import EMBED_DIM
from .weights import ema_weights, save_export

META_KEY = "minicanvas_dit"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "models" / "minicanvas" / "demo_dit.safetensors"
SIZE = 32


def default_config(hidden: int = 128, heads: int = 4, double: int = 2, single: int = 2, patch: int = 4) -> dict:
    """``comfy.ldm.flux.model.Flux`` keyword arguments (JSON-serialisable)."""
    head_dim = hidden // heads
    third = (head_dim // 3) // 2 * 2  # rope axes (index, row, column): even sizes that sum to head_dim
    return {
        "in_channels": 3, "out_channels": 3, "vec_in_dim": None, "context_in_dim": EMBED_DIM,
        "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads, "depth": double,
        "depth_single_blocks": single, "axes_dim": [head_dim - 2 * third, third, third], "theta": 10000,
        "patch_size": patch, "qkv_bias": True, "guidance_embed": False,
    }


# ---------------------------------------------------------------------------
# building blocks (names follow ComfyUI's Flux so the state dicts are the same)


def timestep_features(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal features of ``1000 t`` (cos first), Flux's time embedding input."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = (1000.0 * t.float())[:, None] * freqs[None]
    return torch.cat([ang.cos(), ang.sin()], -1)


def rotary_tables(ids: torch.Tensor, axes: list[int], theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[B, 1, T, head_dim/2]`` for position ids ``[B, T, n_axes]``."""
    cos, sin = [], []
    for i, d in enumerate(axes):
        omega = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d)
        ang = ids[..., i].double()[..., None] * omega
        cos.append(ang.cos())
        sin.append(ang.sin())
    return torch.cat(cos, -1).float()[:, None], torch.cat(sin, -1).float()[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` ``[B, H, T, D]`` by the tables' angles."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2).type_as(x)


class Embedder(nn.Module):
    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.in_layer = nn.Linear(dim_in, dim)
        self.out_layer = nn.Linear(dim, dim)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class QKScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = QKScale(dim)
        self.key_norm = QKScale(dim)

    def forward(self, q, k):
        return (F.rms_norm(q, q.shape[-1:], self.query_norm.scale, 1e-6),
                F.rms_norm(k, k.shape[-1:], self.key_norm.scale, 1e-6))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def split(self, x):
        q, k, v = x.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q, k)
        return q, k, v


class Modulation(nn.Module):
    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.lin = nn.Linear(dim, n * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None].chunk(self.n, -1)


def modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def joint_attention(q, k, v, rope):
    q, k = rotate(q, *rope), rotate(k, *rope)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


def mlp(dim: int, ratio: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, int(dim * ratio)), nn.GELU(approximate="tanh"), nn.Linear(int(dim * ratio), dim))


class DoubleBlock(nn.Module):
    """Image and text streams, each with its own weights, attending jointly (text first)."""

    def __init__(self, dim: int, heads: int, ratio: float):
        super().__init__()
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", Modulation(dim, 6))
            setattr(self, f"{s}_attn", Attention(dim, heads))
            setattr(self, f"{s}_mlp", mlp(dim, ratio))

    def forward(self, img, txt, vec, rope):
        mods, qkv = {}, {}
        for s, x in (("txt", txt), ("img", img)):
            m = getattr(self, f"{s}_mod")(vec)
            mods[s] = m
            qkv[s] = getattr(self, f"{s}_attn").split(getattr(self, f"{s}_attn").qkv(modulate(x, m[0], m[1])))
        q, k, v = (torch.cat([qkv["txt"][i], qkv["img"][i]], 2) for i in range(3))
        out = joint_attention(q, k, v, rope)
        n_txt = txt.shape[1]
        res = {}
        for s, x, a in (("txt", txt, out[:, :n_txt]), ("img", img, out[:, n_txt:])):
            m = mods[s]
            x = x + m[2] * getattr(self, f"{s}_attn").proj(a)
            res[s] = x + m[5] * getattr(self, f"{s}_mlp")(modulate(x, m[3], m[4]))
        return res["img"], res["txt"]


class SingleBlock(nn.Module):
    """One stream over text and image tokens: attention and MLP side by side."""

    def __init__(self, dim: int, heads: int, ratio: float):
        super().__init__()
        self.dim, self.hidden = dim, int(dim * ratio)
        self.heads = heads
        self.linear1 = nn.Linear(dim, 3 * dim + self.hidden)
        self.linear2 = nn.Linear(dim + self.hidden, dim)
        self.norm = QKNorm(dim // heads)
        self.modulation = Modulation(dim, 3)

    def forward(self, x, vec, rope):
        shift, scale, gate = self.modulation(vec)
        qkv, hidden = self.linear1(modulate(x, shift, scale)).split([3 * self.dim, self.hidden], -1)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        q, k = self.norm(q, k)
        a = joint_attention(q, k, v, rope)
        return x + gate * self.linear2(torch.cat([a, F.gelu(hidden, approximate="tanh")], -1))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec)[:, None].chunk(2, -1)
        return self.linear(modulate(x, shift, scale))


class MiniFlux(nn.Module):
    """``forward(x [B,3,H,W], t [B] in [0, 1], context [B, T, 384]) -> velocity [B,3,H,W]``.

    ``block_hooks``: optional ``{("double", i) | ("single", i): fn}``; a double hook gets and
    returns ``(img, txt)``, a single hook the joint ``[B, T_txt + T_img, C]`` tensor and the
    text length (the same points ComfyUI's ``patches_replace["dit"]`` exposes)."""

    def __init__(self, config: dict):
        super().__init__()
        c = dict(config)
        self.config = c
        dim, p = c["hidden_size"], c["patch_size"]
        self.patch = p
        self.axes, self.theta = list(c["axes_dim"]), int(c["theta"])
        self.img_in = nn.Linear(c["in_channels"] * p * p, dim)
        self.time_in = Embedder(256, dim)
        self.txt_in = nn.Linear(c["context_in_dim"], dim)
        self.double_blocks = nn.ModuleList(DoubleBlock(dim, c["num_heads"], c["mlp_ratio"]) for _ in range(c["depth"]))
        self.single_blocks = nn.ModuleList(SingleBlock(dim, c["num_heads"], c["mlp_ratio"])
                                           for _ in range(c["depth_single_blocks"]))
        self.final_layer = FinalLayer(dim, c["out_channels"] * p * p)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # adaLN-zero: every block and the output start as the identity / zero
        for blk in self.double_blocks:
            for mod in (blk.img_mod, blk.txt_mod):
                nn.init.zeros_(mod.lin.weight)
        for blk in self.single_blocks:
            nn.init.zeros_(blk.modulation.lin.weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.linear.weight)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return h // self.patch, w // self.patch

    def forward(self, x, t, context, block_hooks=None):
        b, c, h, w = x.shape
        p = self.patch
        gh, gw = self.grid(h, w)
        img = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * p * p)
        ids = torch.zeros(gh, gw, 3, device=x.device)
        ids[..., 1] = torch.arange(gh, device=x.device, dtype=torch.float32)[:, None]
        ids[..., 2] = torch.arange(gw, device=x.device, dtype=torch.float32)[None]
        ids = torch.cat([torch.zeros(context.shape[1], 3, device=x.device), ids.reshape(-1, 3)])[None].expand(b, -1, -1)
        rope = rotary_tables(ids, self.axes, self.theta)
        vec = self.time_in(timestep_features(t.expand(b) if t.dim() == 0 else t))
        img, txt = self.img_in(img), self.txt_in(context)
        hooks = block_hooks or {}
        for i, blk in enumerate(self.double_blocks):
            img, txt = blk(img, txt, vec, rope)
            if ("double", i) in hooks:
                img, txt = hooks[("double", i)](img, txt)
        joint = torch.cat([txt, img], 1)
        for i, blk in enumerate(self.single_blocks):
            joint = blk(joint, vec, rope)
            if ("single", i) in hooks:
                joint = hooks[("single", i)](joint, txt.shape[1])
        out = self.final_layer(joint[:, txt.shape[1]:], vec)
        return out.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


# ---------------------------------------------------------------------------
# files

SAMPLING = {"family": "flux", "model_sampling": "ModelSamplingFlux + CONST (rectified flow)", "shift": 0.5,
            "sampler": "euler", "scheduler": "simple"}


def metadata_for(config: dict, training: dict | None = None) -> dict:
    from .unet import TEXT_ENCODER
    return {"format": "minicanvas-demo-dit/1", "layout": "comfy.ldm.flux.model.Flux", "flux_config": config,
            "pixel_space": {"size": SIZE, "channels": 3, "range": [-1, 1]}, "sampling": SAMPLING,
            "text_encoder": TEXT_ENCODER, "training": training or {}}


def save_dit(state_dict: dict, path: str | os.PathLike, config: dict, training: dict | None = None,
             dtype: torch.dtype = torch.float16) -> None:
    """Export ``state_dict`` (as ``dtype``) with the metadata of ``config`` and ``training``."""
    save_export(state_dict, path, META_KEY, metadata_for(config, training), dtype)


def load_demo_dit(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """``(MiniFlux (eval), metadata)`` from an export, or the EMA weights of a training checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path or DEFAULT_PATH)
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    sd = load_file(str(path))
    if META_KEY in md:
        meta = json.loads(md[META_KEY])
    elif "train_state" in md and json.loads(md["train_state"]).get("arch") == "dit":
        st = json.loads(md["train_state"])
        meta = metadata_for(st["config"], {"steps": st["step"], "seconds": st["elapsed"]})
        sd = ema_weights(sd)
    else:
        raise ValueError(f"{path}: not a MiniCanvas DiT file (no '{META_KEY}' metadata)")
    model = MiniFlux(meta["flux_config"])
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.to(dtype).eval().requires_grad_(False), meta


# ---------------------------------------------------------------------------
# rectified flow


def shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    """ComfyUI's ``flux_time_shift(shift, 1, t)``: more time at high noise for shift > 0."""
    return math.exp(shift) / (math.exp(shift) + (1 / t - 1))


def simple_sigmas(steps: int, shift: float = SAMPLING["shift"]) -> torch.Tensor:
    """The ``simple`` scheduler's sigmas on ModelSamplingFlux's 10,000-entry table, then 0."""
    table = shifted(torch.arange(1, 10001, dtype=torch.float64) / 10000, shift)
    idx = [len(table) - 1 - int(i * len(table) / steps) for i in range(steps)]
    return torch.cat([table[idx], torch.zeros(1, dtype=torch.float64)]).float()


@torch.no_grad()
def euler_sample(model: MiniFlux, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
                 steps: int = 20, cfg: float = 4.0, block_hooks=None, shift: float = SAMPLING["shift"],
                 context_fn=None) -> torch.Tensor:
    """Euler on the rectified flow with classifier-free guidance, clamped x0 (what the stock
    KSampler ``euler``/``simple`` does with the demo loader's post-CFG clamp).
    ``context_fn(context, sigma_index)`` may edit the text states each step."""
    sigmas = simple_sigmas(steps, shift)
    x = noise * sigmas[0]
    b = x.shape[0]
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        ctx = torch.cat([cond, uncond.expand(b, *uncond.shape[1:])])
        if context_fn is not None:
            ctx = context_fn(ctx, i)
        v = model(torch.cat([x, x]), s.expand(2 * b), ctx, block_hooks)
        x0 = torch.cat([x, x]) - s * v
        c, u = x0[:b], x0[b:]
        x0 = (u + cfg * (c - u)).clamp(-1, 1)
        x = x0 + (x - x0) * (s_next / s)
    return x
