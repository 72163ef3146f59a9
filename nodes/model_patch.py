"""The one place that knows ComfyUI's ModelPatcher.

A transformer block's output has no built-in hook (output_block_patch misses blocks
followed by an Upsample, e.g. output_blocks.5.1), so we replace the block's `forward` with
an object patch. We wrap whatever `get_model_object` returns, so another pack's patch of
the same block stays in the chain; object patches are applied when the clone is loaded
and restored when it is unloaded, so the input MODEL is never changed.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

import torch

from saemnesia_core import IncompatibleSAEError, LoadedSAE
from saemnesia_core.checkpoint import CONTEXT
from saemnesia_core.intervention import check_window

log = logging.getLogger("saemnesia")

_BLOCK = re.compile(r"^(input_blocks\.\d+\.\d+|middle_block\.\d+|output_blocks\.\d+\.\d+)$")


def diffusion_module(model, hook_point: str):
    """The nn.Module at `hook_point` inside the diffusion model, or None."""
    if not _BLOCK.match(hook_point or ""):
        return None
    try:
        return model.get_model_object(f"diffusion_model.{hook_point}")
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def transformer_blocks(model) -> list[str]:
    """Names of the model's cross-attention transformer blocks (the valid hook points)."""
    dm = model.get_model_object("diffusion_model")
    out = []
    for name, mod in dm.named_modules():
        if _BLOCK.match(name) and type(mod).__name__ in ("SpatialTransformer", "SpatialVideoTransformer"):
            out.append(name)
    return out


def block_width(module) -> int | None:
    for attr in ("in_channels",):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    proj = getattr(module, "proj_out", None)
    return getattr(proj, "out_features", None) or getattr(proj, "out_channels", None)


def check_compatible(model, loaded: LoadedSAE):
    """Every block of the SAE (set) exists in this model with the SAE's width."""
    for member in loaded.blocks:
        _check_block(model, member)


def context_width(model) -> int | None:
    """Width of the text states the model's cross-attentions read (the 'context' hook point)."""
    dm = model.get_model_object("diffusion_model")
    for name, mod in dm.named_modules():
        if name.endswith("attn2") and hasattr(getattr(mod, "to_k", None), "in_features"):
            return int(mod.to_k.in_features)
    return None


def _check_block(model, loaded: LoadedSAE):
    hook = loaded.info.hook_point
    if hook == CONTEXT:
        width = context_width(model)
        if width is None:
            raise IncompatibleSAEError("The SAE reads the text conditioning ('context'), but this model has no "
                                       "cross-attention. Use an SAE trained for this model.")
        if width != loaded.sae.d_in:
            raise IncompatibleSAEError(
                f"The SAE expects text states of width {loaded.sae.d_in}, but this model's cross-attention reads "
                f"{width}. The SAE was made for another model family ({loaded.info.model_family}).")
        return
    module = diffusion_module(model, hook)
    if module is None:
        blocks = ", ".join(transformer_blocks(model)) or "none"
        raise IncompatibleSAEError(
            f"This model has no transformer block '{hook}', which the SAE ({loaded.info.model_family}, d_in "
            f"{loaded.sae.d_in}) was trained on. The model's blocks are: {blocks}. Use an SAE trained for this "
            "model (or train one with 'Train SAE from Prompts').")
    width = block_width(module)
    if width is not None and width != loaded.sae.d_in:
        raise IncompatibleSAEError(
            f"The SAE expects {loaded.sae.d_in} channels at '{hook}', but this model's block '{hook}' has {width}. "
            f"The SAE was made for another model family ({loaded.info.model_family}); use one trained on this model.")


def _transformer_options(args, kwargs) -> dict:
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"] or {}
    return args[2] if len(args) > 2 and isinstance(args[2], dict) else {}


def current_sigma(opts: dict) -> float | None:
    sig = opts.get("sigmas")
    return None if sig is None else float(torch.as_tensor(sig).max())


def step_index(opts: dict, sigma: float | None) -> int | None:
    """Index of the current sigma in the sampler's schedule (robust to cond/uncond being
    batched or run apart, unlike counting calls)."""
    sched = opts.get("sample_sigmas")
    if sched is None or sigma is None:
        return None
    hit = torch.isclose(torch.as_tensor(sched, dtype=torch.float32).cpu(), torch.tensor(sigma, dtype=torch.float32),
                        rtol=1e-4, atol=1e-6).nonzero()
    return int(hit[0]) if hit.numel() else None


def half_rows(opts: dict, batch: int, cond_only: bool) -> torch.Tensor | None:
    """Bool mask of the batch rows to edit; None = all. The batch is len(cond_or_uncond)
    equal chunks, 0 marking the positive (cond) prompt."""
    if not cond_only:
        return None
    flags = opts.get("cond_or_uncond")
    if not flags:
        return None
    per = batch // len(flags)
    return torch.tensor([f == 0 for f in flags], dtype=torch.bool).repeat_interleave(per)


SAE_PATCH_KEY = "saemnesia_sae"  # no UNet code reads this key; it only carries `.to()` targets
BlockEdit = Callable[[torch.Tensor, dict], torch.Tensor]


def patch_block_output(model, hook_point: str, edit: BlockEdit):
    """Clone `model` and run `edit(block_output, info)` after the block at `hook_point`.

    info: sigma, timestep (the model's 0..999), transformer_options. `edit` returns the
    (possibly) new output.
    """
    return patch_block_outputs(model, {hook_point: edit})


def patch_block_outputs(model, edits: dict[str, BlockEdit]):
    """One clone of `model` with `edit` run after each block named in `edits`."""
    m = model.clone()
    sampling = model_sampling(m)
    for hook_point, edit in edits.items():
        key = f"diffusion_model.{hook_point}.forward"
        m.add_object_patch(key, _wrapped(m.get_model_object(key), edit, sampling))
    return m


def _step_info(opts: dict, sampling) -> dict:
    """What an edit is told about the current step: sigma, the model's timestep (0..999), the options."""
    sigma = current_sigma(opts)
    timestep = float(sampling.timestep(torch.tensor(sigma))) if sigma is not None else 0.0
    return {"sigma": sigma, "timestep": timestep, "transformer_options": opts}


def _wrapped(inner, edit: BlockEdit, sampling):
    def forward(*args, **kwargs):
        out = inner(*args, **kwargs)
        return edit(out, _step_info(_transformer_options(args, kwargs), sampling))
    return forward


class ErasePatch:
    """An eraser as a ComfyUI model patch. ComfyUI's model management calls `.to(device)` and
    `.to(dtype)` on model patches when it loads or offloads the model (model_patches_to), so the
    SAE copy follows the model instead of being converted on the first sampling step (or kept on
    the GPU after the model left it); ModelPatcher.clone deep-copies model_options, and the
    eraser is immutable config, so a copy is the same patch."""

    def __init__(self, eraser):
        self.eraser = eraser

    def to(self, device_or_dtype, _dtype=torch.dtype, _device=torch.device):
        # (torch types bound as defaults: ComfyUI also calls .to() from __del__ at interpreter exit)
        place = getattr(self.eraser, "place", None)  # a plain callable (tests) has nothing to move
        if place is not None:
            if isinstance(device_or_dtype, _dtype):
                place(dtype=device_or_dtype)
            else:
                place(device=_device(device_or_dtype))
        return self

    def __deepcopy__(self, memo):
        return self


def model_sampling(model):
    """The model's sampling object (sigma <-> timestep, the schedule's range)."""
    return model.get_model_object("model_sampling")


def erase_patch(model, loaded: LoadedSAE, make_eraser: Callable[[LoadedSAE], Callable], cond_only: bool,
                start_percent: float, end_percent: float):
    """Clone of `model` in which each block of the SAE (set) runs its eraser within the window.

    The SAE is checked against the model first; then `make_eraser(member)` builds the eraser of
    each member of `loaded.blocks` (so a misfit SAE is named before its concepts are looked up)."""
    check_compatible(model, loaded)
    check_window(start_percent, end_percent)  # a NaN window would fail deep inside percent_to_sigma
    erasers = [make_eraser(member) for member in loaded.blocks]
    ms = model_sampling(model)
    sigma_start, sigma_end = ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent)

    def edit_with(eraser):
        def edit(h, info):
            sigma = info["sigma"]
            if sigma is None or not (sigma_end <= sigma <= sigma_start):
                return h
            return eraser(h, info["timestep"], half_rows(info["transformer_options"], h.shape[0], cond_only))
        return edit

    pairs = list(zip(loaded.blocks, erasers))
    patched = patch_block_outputs(model, {m.info.hook_point: edit_with(e) for m, e in pairs if m.info.hook_point != CONTEXT})
    for m, e in pairs:
        if m.info.hook_point == CONTEXT:
            patched.set_model_attn2_patch(_context_patch(edit_with(e), ms))
    # Listed as model patches so ComfyUI's model management moves the SAEs with the model.
    for e in erasers:
        patched.set_model_patch(ErasePatch(e), SAE_PATCH_KEY)
    return patched


def _context_patch(edit: BlockEdit, sampling):
    """An attn2 patch: the text states every cross-attention reads, edited before each read.
    All blocks of one forward get the same context tensor; the edit runs once for it."""
    last = {"in": None, "out": None}

    def patch(n, context, value, extra_options):
        if context is not last["in"]:
            last["in"], last["out"] = context, edit(context, _step_info(extra_options, sampling))
        out = last["out"]
        return n, out, (out if value is context else value)

    return patch


def capture_patch(model, hook_point: str, sink: Callable[[torch.Tensor, dict], None], cond_only: bool = True):
    """Clone of `model` that hands the block output (cond rows only, by default) to `sink`;
    info also carries `step`, the index of the current sigma in the schedule."""
    return capture_patches(model, {hook_point: sink}, cond_only)


def capture_patches(model, sinks: dict[str, Callable[[torch.Tensor, dict], None]], cond_only: bool = True):
    """capture_patch for several blocks at once (one clone, one sampling pass feeds them all)."""

    def edit_for(sink):
        def edit(h, info):
            info["step"] = step_index(info["transformer_options"], info["sigma"])
            rows = half_rows(info["transformer_options"], h.shape[0], cond_only)
            sink(h if rows is None else h[rows.to(h.device)], info)
            return h
        return edit

    return patch_block_outputs(model, {hook: edit_for(sink) for hook, sink in sinks.items()})


def model_family(model) -> str:
    """A short name of the model's config class (sd15, sdxl, ...), recorded in trained SAEs."""
    return getattr(getattr(model.model, "model_config", None), "__class__", type(None)).__name__.lower()
