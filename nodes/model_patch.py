"""The one place that knows ComfyUI's model objects.

FAMILIES is the table of the model families the pack knows, learned from the model's config
(`model.model.model_config`): where each family's blocks live, what a block takes and returns,
the text encoders whose states it reads, whether its `y` carries a pooled text vector, and the
block an SAE is trained on by default.

Every edit goes through one ModelPatcher seam and stacks with other packs' patches:
- a block's output has no built-in hook (output_block_patch misses blocks followed by an
  Upsample, and DiT blocks have none), so the block's `forward` is replaced with an object
  patch that wraps whatever `get_model_object` returns (another pack's patch of the same block
  stays in the chain); object patches are applied when the clone is loaded and restored when it
  is unloaded, so the input MODEL is never changed;
- the text states and the pooled vector are edited by an APPLY_MODEL wrapper around the model
  call, where every family receives them (`c_crossattn`, `y`). The wrapper also tells the block
  patches the latent's size and the text length, which DiT blocks need to find their image
  tokens and fold them back to the latent grid.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

import comfy.model_management
import comfy.patcher_extension
import comfy.utils

from saemnesia_core import IncompatibleSAEError, LoadedSAE, SAEError
from saemnesia_core.checkpoint import CONTEXT
from saemnesia_core.intervention import PooledShift, check_window

log = logging.getLogger("saemnesia")

# What a block returns, and so where its image tokens are:
SPATIAL = "[B, C, H, W] map"  # UNet transformer blocks
IMG_TXT = "(img, txt) tuple"  # Flux / Chroma double_blocks
TXT_IMG = "(txt, img) tuple"  # SD3 joint_blocks, Qwen-Image transformer_blocks, AuraFlow double_layers
JOINT = "[B, T, C] text then image tokens"  # Flux single_blocks, Lumina 2 layers, AuraFlow single_layers
IMG = "[B, T, C] image tokens"  # HunyuanDiT blocks (the text is read by cross-attention)

TXT, UPDATE = "txt", "update"  # hook point qualifiers: "double_blocks.3:txt", "input_blocks.8.1:update"


@dataclass(frozen=True)
class Blocks:
    """One kind of block of a family: `<prefix>.<N>` in the diffusion model."""

    prefix: str
    returns: str  # one of SPATIAL, IMG_TXT, TXT_IMG, JOINT, IMG
    # where the block's forward receives each stream, as (position, keyword): read for the
    # update convention (output minus input)
    img_arg: tuple[int, str] = (0, "x")
    txt_arg: tuple[int, str] | None = None

    @property
    def has_text(self) -> bool:
        return self.returns in (IMG_TXT, TXT_IMG, JOINT)


def _hidden(dm) -> int:
    return int(dm.hidden_size)


def _middle(blocks: list[str]) -> str:
    return blocks[len(blocks) // 2]


def _unet_default(blocks: list[str]) -> str:
    outs = [b for b in blocks if b.startswith("output_blocks")] or blocks
    if "output_blocks.4.1" in outs:
        return "output_blocks.4.1"  # SAeUron's object block on SD1.x
    return outs[len(outs) // 2 - 1] if len(outs) > 1 else outs[0]


def _unet_context_width(dm) -> int | None:
    for name, mod in dm.named_modules():
        if name.endswith("attn2") and hasattr(getattr(mod, "to_k", None), "in_features"):
            return int(mod.to_k.in_features)
    return None


@dataclass(frozen=True)
class Family:
    name: str  # as users know it
    configs: tuple[str, ...]  # ComfyUI's config classes (comfy.supported_models) of the family
    text: str | None  # the text encoders whose states the model reads as c_crossattn (None: not known)
    default: Callable[[list[str]], str]  # the block an SAE is trained on when hook_point is 'auto'
    default_why: str
    blocks: tuple[Blocks, ...] = ()  # empty: a UNet (its SpatialTransformer blocks, found by type)
    pooled: bool = False  # y starts with the pooled text vector (SDXL: then the size embeddings)
    width: Callable = _hidden  # channels of a block's activations
    context_width: Callable = _unet_context_width  # width of the text states (c_crossattn)
    text_tokens: Callable = field(default=lambda dm, n: n)  # text tokens before the image in a JOINT sequence
    aliases: Callable = field(default=lambda name, model: None)  # another naming (diffusers) -> ComfyUI's
    update_default: bool = False  # 'auto' trains on the block update (output minus input)

    @property
    def is_unet(self) -> bool:
        return not self.blocks


def _diffusers_unet_block(name: str, model) -> str | None:
    """'down_blocks.2.attentions.1' -> 'input_blocks.8.1' through ComfyUI's own key map."""
    if not re.fullmatch(r"(down_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.0|up_blocks\.\d+\.attentions\.\d+)", name):
        return None
    keys = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
    probe = f"{name}.proj_in.weight"
    ldm = keys.get(probe)
    return ldm[: -len(".proj_in.weight")] if ldm else None


def _diffusers_flux_block(name: str, model) -> str | None:
    """diffusers' Flux names (transformer_blocks = double, single_transformer_blocks = single)."""
    m = re.fullmatch(r"(single_)?transformer_blocks\.(\d+)", name)
    if not m:
        return None
    return f"{'single_blocks' if m.group(1) else 'double_blocks'}.{m.group(2)}"


def _in_features(*path):
    def width(dm):
        mod = dm
        for p in path:
            mod = mod[p] if isinstance(p, int) else getattr(mod, p)
        return int(mod.in_features)
    return width


def _lumina_text_tokens(dm, n: int) -> int:
    pad = getattr(dm, "pad_tokens_multiple", None)
    return n + ((-n) % pad if pad else 0)


def _aura_text_tokens(dm, n: int) -> int:
    return n + int(dm.register_tokens.shape[1])  # register tokens go before the text


def _last(blocks: list[str]) -> str:
    doubles = [b for b in blocks if b.startswith("double_blocks")] or blocks
    return doubles[-1]


_FLUX_BLOCKS = (Blocks("double_blocks", IMG_TXT, (0, "img"), (1, "txt")), Blocks("single_blocks", JOINT, (0, "x"), (0, "x")))
_UNET_WHY = "SAeUron's object block"
FAMILIES: tuple[Family, ...] = (
    Family("SD 1.x", ("SD15", "SD15_instructpix2pix"), "CLIP-L", _unet_default, _UNET_WHY,
           aliases=_diffusers_unet_block),
    Family("SD 2.x", ("SD20", "SD21UnclipL", "SD21UnclipH", "LotusD"), "OpenCLIP-H", _unet_default, _UNET_WHY,
           aliases=_diffusers_unet_block),
    Family("SDXL", ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B", "SDXL_instructpix2pix"),
           "CLIP-L + CLIP-G", lambda blocks: "input_blocks.8.1" if "input_blocks.8.1" in blocks else _unet_default(blocks),
           "down_blocks.2.attentions.1, the first of Surkov et al.'s SDXL blocks, on its update",
           pooled=True, aliases=_diffusers_unet_block, update_default=True),
    Family("SD3 / SD3.5", ("SD3",), "CLIP-L + CLIP-G + T5-XXL", _middle, "the middle joint block",
           (Blocks("joint_blocks", TXT_IMG, (1, "x"), (0, "context")),), pooled=True,
           context_width=_in_features("context_embedder")),
    Family("Flux", ("Flux", "FluxInpaint", "FluxSchnell"), "T5-XXL", _last,
           "the last double block (transformer_blocks.18 of Flux.1, as antoniomari/SAE_flux_18)", _FLUX_BLOCKS,
           pooled=True, context_width=_in_features("txt_in"), aliases=_diffusers_flux_block),
    # the bundled MiniCanvas-DiT: Flux's layout and blocks, but MiniLM text states and no pooled vector
    Family("MiniCanvas-DiT", ("MiniCanvasDiTConfig",), "MiniLM-L6", _last, "the last double block, as on Flux",
           _FLUX_BLOCKS, context_width=_in_features("txt_in"), aliases=_diffusers_flux_block),
    Family("Chroma", ("Chroma",), "T5-XXL", _last, "the last double block, as on Flux", _FLUX_BLOCKS,
           context_width=_in_features("txt_in"), aliases=_diffusers_flux_block),
    Family("Lumina 2", ("Lumina2",), "Gemma 2 2B", _middle, "the middle layer",
           (Blocks("layers", JOINT, (0, "x"), (0, "x")),), width=lambda dm: int(dm.dim),
           context_width=_in_features("cap_embedder", -1), text_tokens=_lumina_text_tokens),
    Family("Z-Image", ("ZImage",), "Qwen3 4B", _middle, "the middle layer",
           (Blocks("layers", JOINT, (0, "x"), (0, "x")),), width=lambda dm: int(dm.dim),
           context_width=_in_features("cap_embedder", -1), text_tokens=_lumina_text_tokens),
    Family("Qwen-Image", ("QwenImage",), "Qwen2.5-VL 7B", _middle, "the middle block",
           (Blocks("transformer_blocks", TXT_IMG, (0, "hidden_states"), (1, "encoder_hidden_states")),),
           width=lambda dm: int(dm.inner_dim), context_width=_in_features("txt_in")),
    Family("HunyuanDiT", ("HunyuanDiT", "HunyuanDiT1"), "BERT (its mT5 states are not edited)", _middle,
           "the middle block", (Blocks("blocks", IMG, (0, "x")),),
           context_width=lambda dm: int(dm.text_states_dim)),
    Family("AuraFlow", ("AuraFlow",), "Pile-T5-XL", _middle, "the middle single layer",
           (Blocks("double_layers", TXT_IMG, (1, "x"), (0, "c")), Blocks("single_layers", JOINT, (0, "cx"), (0, "cx"))),
           width=lambda dm: int(dm.init_x_linear.out_features), context_width=_in_features("cond_seq_linear"),
           text_tokens=_aura_text_tokens),
)
_BY_CONFIG = {c: f for f in FAMILIES for c in f.configs}
_BY_RECORD = {c.lower(): f for f in FAMILIES for c in f.configs}  # SAE files record the config's name in lower case


def supported_names() -> str:
    return ", ".join(f.name for f in FAMILIES) + " and other SD-style UNets"


def family_of(model) -> Family:
    """The family of a MODEL, from its config class (a subclass counts as its parent's family
    unless listed itself); an SD-style UNet the table does not list gets the UNet rules."""
    config = getattr(model.model, "model_config", None)
    for cls in type(config).__mro__:
        if cls.__name__ in _BY_CONFIG:
            return _BY_CONFIG[cls.__name__]
    dm = model.get_model_object("diffusion_model")
    if type(dm).__name__ == "UNetModel":
        return Family(type(config).__name__, (type(config).__name__,), None, _unet_default, _UNET_WHY,
                      aliases=_diffusers_unet_block)
    image_model = (getattr(config, "unet_config", None) or {}).get("image_model")
    kind = f"{type(config).__name__}" + (f" (image_model '{image_model}')" if image_model else "")
    raise IncompatibleSAEError(f"This model is {kind}, a model family SAEmnesia does not support yet. Supported: "
                               f"{supported_names()}.")


def family_of_record(model_family: str) -> Family | None:
    """The family an SAE file names (its model_family), None when the table does not know it."""
    return _BY_RECORD.get((model_family or "").lower())


def model_family(model) -> str:
    """A short name of the model's config class (sd15, sdxl, flux, ...), recorded in trained SAEs."""
    return getattr(getattr(model.model, "model_config", None), "__class__", type(None)).__name__.lower()


# --- hook points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """A place an SAE reads: a block, its image or text stream, its output or its update."""

    block: str  # module path in the diffusion model: "output_blocks.4.1", "double_blocks.3"
    group: Blocks | None = None  # None: a UNet transformer block
    text: bool = False  # the block's text stream (DiT blocks that carry one)
    update: bool = False  # output minus input (Surkov et al.'s convention) instead of the output

    def __str__(self):
        return self.block + (f":{TXT}" if self.text else "") + (f":{UPDATE}" if self.update else "")

    @property
    def spatial(self) -> bool:
        """Its activations are a map of the picture (a heatmap can be drawn)."""
        return not self.text


def transformer_blocks(model) -> list[str]:
    """The model's blocks an SAE can read (without the :txt / :update qualifiers)."""
    family = family_of(model)
    dm = model.get_model_object("diffusion_model")
    if family.is_unet:
        return [name for name, mod in dm.named_modules()
                if type(mod).__name__ in ("SpatialTransformer", "SpatialVideoTransformer")
                and re.fullmatch(r"input_blocks\.\d+\.\d+|middle_block\.\d+|output_blocks\.\d+\.\d+", name)]
    return [f"{g.prefix}.{i}" for g in family.blocks for i in range(len(getattr(dm, g.prefix, ())))]


def _blocks_text(model, family: Family) -> str:
    blocks = transformer_blocks(model)
    shown = ", ".join(blocks[:40]) + (f" ... ({len(blocks)} in all)" if len(blocks) > 40 else "")
    forms = "; add ':update' for the block's update (output minus input)"
    if any(g.has_text for g in family.blocks):
        forms += ", ':txt' for the text stream of a block that carries one"
    return f"{shown}{forms}"


def parse_hook(model, text: str) -> Hook:
    """A hook point as typed (or stored in an SAE file) -> the Hook in this model; an SAEError
    naming the model's blocks when it has no such block."""
    family = family_of(model)
    parts = [p.strip() for p in (text or "").strip().split(":")]
    name, quals = parts[0], [q.lower() for q in parts[1:]]
    unknown = [q for q in quals if q not in (TXT, UPDATE, "img", "output")]
    name = family.aliases(name, model) or name
    blocks = transformer_blocks(model)
    if unknown or name not in blocks:
        what = f"'{text}'" + (f" (unknown qualifier {', '.join(unknown)})" if unknown else "")
        raise SAEError(f"This {family.name} model has no transformer block {what}. Its blocks: {_blocks_text(model, family)}; "
                       "or 'context' for the text states.")
    group = None if family.is_unet else next(g for g in family.blocks if name.startswith(g.prefix + "."))
    text_stream = TXT in quals
    if text_stream and (group is None or not group.has_text):
        raise SAEError(f"'{text}': the block {name} of this {family.name} model has no text stream; drop ':txt' "
                       "(the text states of every block are 'context').")
    return Hook(name, group, text_stream, UPDATE in quals)


def default_hook(model) -> str:
    """The block 'auto' trains on for this family, with its convention."""
    family = family_of(model)
    blocks = transformer_blocks(model)
    if not blocks:
        raise SAEError(f"This {family.name} model has no transformer blocks an SAE can read; train on 'context' "
                       "(the text states) instead.")
    return str(Hook(family.default(blocks), update=family.update_default))


def diffusion_module(model, hook_point: str):
    """The nn.Module of a hook point's block, or None when the model has no such block."""
    try:
        return model.get_model_object(f"diffusion_model.{parse_hook(model, hook_point).block}")
    except SAEError:
        return None


def block_width(module) -> int | None:
    """Channels of a UNet transformer block."""
    if isinstance(getattr(module, "in_channels", None), int):
        return int(module.in_channels)
    proj = getattr(module, "proj_out", None)
    return getattr(proj, "out_features", None) or getattr(proj, "out_channels", None)


def hook_width(model, hook_point: str) -> int:
    """Width of the activations an SAE at this hook point reads."""
    if hook_point == CONTEXT:
        return context_width(model)
    hook = parse_hook(model, hook_point)
    if hook.group is None:
        return block_width(model.get_model_object(f"diffusion_model.{hook.block}"))
    return family_of(model).width(model.get_model_object("diffusion_model"))


def context_width(model) -> int:
    """Width of the text states the model reads (the 'context' hook point)."""
    family = family_of(model)
    width = family.context_width(model.get_model_object("diffusion_model"))
    if width is None:
        raise SAEError(f"This {family.name} model reads no text states, so there is no 'context' for an SAE.")
    return width


def resolve_hooks(model, texts: list[str]) -> list[str]:
    """Hook points as typed ('auto', blocks in any naming, 'context') -> their canonical names."""
    out = []
    for text in texts:
        if text in ("", "auto"):
            out.append(default_hook(model))
        elif text == CONTEXT:
            out.append(CONTEXT)
        else:
            out.append(str(parse_hook(model, text)))
    return list(dict.fromkeys(out))


def is_spatial(hook_point: str) -> bool:
    """The activations at this hook point are a map of the picture (a heatmap can be drawn)."""
    return hook_point != CONTEXT and TXT not in [q.strip().lower() for q in hook_point.split(":")[1:]]


def text_record(model, clip_widths: dict | None = None) -> dict:
    """What a text SAE records about the text it trained on, to refuse other families."""
    family = family_of(model)
    return {"family": family.name, "encoders": family.text, "width": context_width(model), **(clip_widths or {})}


# --- compatibility -------------------------------------------------------------------------


def check_compatible(model, loaded: LoadedSAE):
    """Every block of the SAE (set) exists in this model with the SAE's width."""
    for member in loaded.blocks:
        _check_member(model, member)


def _check_member(model, loaded: LoadedSAE):
    family = family_of(model)
    hook = loaded.info.hook_point
    made_for = family_of_record(loaded.info.model_family)
    made_name = made_for.name if made_for else loaded.info.model_family
    if hook == CONTEXT:
        trained = member_training(loaded).get("text", {})
        encoders = trained.get("encoders") or (made_for.text if made_for else None)
        if encoders and family.text and encoders != family.text:
            raise IncompatibleSAEError(
                f"This SAE reads the text states of {made_name} ({encoders}), but this is a {family.name} model, whose "
                f"text comes from {family.text}. A text SAE only works with the text encoders it was trained on: use "
                "one trained on this model (Train SAE from Prompts, hook_point 'context').")
        width = context_width(model)
        if width != loaded.sae.d_in:
            raise IncompatibleSAEError(
                f"The SAE expects text states of width {loaded.sae.d_in}, but this {family.name} model reads {width}. "
                f"The SAE was made for another model family ({made_name}); use one trained on this model.")
        return
    other = f"This SAE was made for {made_for.name} models, and this is a {family.name} model. " \
        if made_for is not None and made_for is not family else ""
    try:
        parsed = parse_hook(model, hook)
    except SAEError as e:
        raise IncompatibleSAEError(
            f"{other}The SAE ({made_name}, d_in {loaded.sae.d_in}) was trained on '{hook}'. {e} Use an SAE trained for "
            "this model (or train one with 'Train SAE from Prompts').") from None
    width = hook_width(model, str(parsed))
    if width is not None and width != loaded.sae.d_in:
        raise IncompatibleSAEError(
            f"{other}The SAE expects {loaded.sae.d_in} channels at '{hook}', but this {family.name} model's block '{hook}' has "
            f"{width}. The SAE was made for another model family ({made_name}); use one trained on this model.")


def member_training(member: LoadedSAE) -> dict:
    """The training record of one SAE of a file (a set keeps one per hook point)."""
    training = member.info.training or {}
    return training.get("members", {}).get(member.info.hook_point, training)


# --- sampling state ------------------------------------------------------------------------


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


def model_sampling(model):
    """The model's sampling object (sigma <-> timestep, the schedule's range)."""
    return model.get_model_object("model_sampling")


def _step_info(opts: dict, sampling) -> dict:
    """What an edit is told about the current step: sigma, the model's timestep (0..999), the options."""
    sigma = current_sigma(opts)
    timestep = float(sampling.timestep(torch.tensor(sigma))) if sigma is not None else 0.0
    return {"sigma": sigma, "timestep": timestep, "transformer_options": opts}


@dataclass
class _Call:
    """One model call in progress, as the APPLY_MODEL wrapper saw it."""

    opts: dict
    latent_hw: tuple[int, int]
    text_tokens: int | None


_CALLS: list[_Call] = []  # model calls in progress, innermost last (ComfyUI samples on one thread)
WRAPPER_KEY = "saemnesia"


def _call_wrapper(edit_text: Callable | None):
    """An APPLY_MODEL wrapper: records the call for the block patches, and edits the text
    states (and pooled vector) with `edit_text(base_model, x, c_crossattn, opts, kwargs)`."""

    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        opts = transformer_options if transformer_options is not None else {}
        if edit_text is not None and c_crossattn is not None:
            c_crossattn, kwargs = edit_text(executor.class_obj, x, c_crossattn, opts, kwargs)
        _CALLS.append(_Call(opts, tuple(x.shape[-2:]), None if c_crossattn is None else int(c_crossattn.shape[1])))
        try:
            return executor(x, t, c_concat, c_crossattn, control, opts, **kwargs)
        finally:
            _CALLS.pop()

    return wrapper


def _options_from_args(args, kwargs) -> dict:
    """A UNet block's transformer_options, when the block is run outside a wrapped model call."""
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"] or {}
    return args[2] if len(args) > 2 and isinstance(args[2], dict) else {}


# --- where a block's activations are --------------------------------------------------------


def _arg(args, kwargs, where: tuple[int, str]):
    pos, name = where
    return kwargs[name] if name in kwargs else args[pos]


class _Site:
    """The activations of one hook point in one call of its block: `take` them from the block's
    output (and input, for the update), `put` edited ones back. Image tokens are folded to the
    latent's grid, [B, C, h, w], so erasers, PER donors and heatmaps see a map as on a UNet."""

    def __init__(self, hook: Hook, family: Family, dm, call: _Call | None):
        self.hook, self.family, self.dm, self.call = hook, family, dm, call

    def _stream(self, value, from_input: bool, args=(), kwargs=None):
        g = self.hook.group
        if from_input:
            return _arg(args, kwargs, g.txt_arg if self.hook.text else g.img_arg) if g else _arg(args, kwargs, (0, "x"))
        if g is None or g.returns in (JOINT, IMG):
            return value
        first_is_img = g.returns == IMG_TXT
        return value[0] if first_is_img != self.hook.text else value[1]

    def _span(self, tokens: torch.Tensor) -> tuple[int, int]:
        """(start, end) of the hook's tokens in a stream tensor."""
        g, call = self.hook.group, self.call
        if call is None:
            raise SAEError(f"The block {self.hook.block} ran outside a sampled model call, so its image tokens cannot "
                           "be placed on the picture. Sample through KSampler (or comfy.sample).")
        start = self.family.text_tokens(self.dm, call.text_tokens or 0) if g.returns == JOINT else 0
        if self.hook.text:
            return (0, start) if g.returns == JOINT else (0, tokens.shape[1])
        gh, gw = self.grid
        return start, start + gh * gw

    @property
    def grid(self) -> tuple[int, int]:
        p = int(getattr(self.dm, "patch_size", 2) or 1)
        h, w = self.call.latent_hw
        return (h + p - 1) // p, (w + p - 1) // p

    def _select(self, stream: torch.Tensor) -> torch.Tensor:
        if self.hook.group is None:
            return stream
        a, b = self._span(stream)
        part = stream[:, a:b]
        if self.hook.text:
            return part
        gh, gw = self.grid
        return part.reshape(part.shape[0], gh, gw, part.shape[-1]).permute(0, 3, 1, 2)

    def block_input(self, args, kwargs) -> torch.Tensor | None:
        """A copy of the stream the block receives, for the update (Flux's blocks add to their
        input in place: read after the call, it would equal the output)."""
        return self._stream(None, True, args, kwargs).clone() if self.hook.update else None

    def take(self, out, before: torch.Tensor | None) -> torch.Tensor | None:
        stream = self._stream(out, False)
        if stream is None:
            return None  # SD3's last joint block returns no text
        h = self._select(stream)
        if before is not None:
            h = h - self._select(before)
        return h

    def put(self, out, new: torch.Tensor, before: torch.Tensor | None):
        if before is not None:
            new = self._select(before) + new
        g = self.hook.group
        if g is None:
            return new
        stream = self._stream(out, False)
        a, b = self._span(stream)
        tokens = new if self.hook.text else new.permute(0, 2, 3, 1).reshape(new.shape[0], -1, new.shape[1])
        edited = stream.clone()
        edited[:, a:b] = tokens.to(stream.dtype)
        if g.returns in (JOINT, IMG):
            return edited
        img_first = g.returns == IMG_TXT
        pair = list(out)
        pair[0 if img_first != self.hook.text else 1] = edited
        return type(out)(pair)


BlockEdit = Callable[[torch.Tensor, dict], torch.Tensor]


def patch_block_output(model, hook_point: str, edit: BlockEdit):
    """Clone `model` and run `edit(activations, info)` after the block at `hook_point`.

    info: sigma, timestep (the model's 0..999), transformer_options. `edit` returns the
    (possibly) new activations.
    """
    return patch_block_outputs(model, {hook_point: edit})


def patch_block_outputs(model, edits: dict[str, BlockEdit], edit_text: Callable | None = None):
    """One clone of `model` with `edit` run after each block named in `edits` (several hook points
    on one block chain), and the model call wrapped (see _call_wrapper)."""
    m = model.clone()
    sampling = model_sampling(m)
    family = family_of(m)
    dm = m.get_model_object("diffusion_model")
    for hook_point, edit in edits.items():
        hook = parse_hook(m, hook_point)
        key = f"diffusion_model.{hook.block}.forward"
        m.add_object_patch(key, _wrapped(m.get_model_object(key), hook, family, dm, edit, sampling))
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, _call_wrapper(edit_text))
    return m


def _wrapped(inner, hook: Hook, family: Family, dm, edit: BlockEdit, sampling):
    def forward(*args, **kwargs):
        call = _CALLS[-1] if _CALLS else None
        site = _Site(hook, family, dm, call)
        before = site.block_input(args, kwargs)
        out = inner(*args, **kwargs)
        h = site.take(out, before)
        if h is None:
            return out
        opts = call.opts if call is not None else _options_from_args(args, kwargs)
        new = edit(h, _step_info(opts, sampling))
        return out if new is h else site.put(out, new, before)
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
        if place is not None and device_or_dtype is not None:  # None: a model that does not know its dtype
            if isinstance(device_or_dtype, _dtype):
                place(dtype=device_or_dtype)
            else:
                place(device=_device(device_or_dtype))
        return self

    def __deepcopy__(self, memo):
        return self


SAE_PATCH_KEY = "saemnesia_sae"  # no model code reads this key; it only carries `.to()` targets


def erase_patch(model, loaded: LoadedSAE, make_eraser: Callable[[LoadedSAE], Callable], cond_only: bool,
                start_percent: float, end_percent: float):
    """Clone of `model` in which each SAE of the file runs its eraser within the window: block
    SAEs after their block, a text SAE on the text states of the model call (and, where the
    family's `y` carries a pooled text vector and the SAE recorded its concepts' pooled means,
    on that vector too).

    The SAE is checked against the model first; then `make_eraser(member)` builds the eraser of
    each member of `loaded.blocks` (so a misfit SAE is named before its concepts are looked up)."""
    check_compatible(model, loaded)
    check_window(start_percent, end_percent)  # a NaN window would fail deep inside percent_to_sigma
    erasers = [make_eraser(member) for member in loaded.blocks]
    ms = model_sampling(model)
    sigma_start, sigma_end = ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent)

    def in_window(info) -> bool:
        sigma = info["sigma"]
        return sigma is not None and sigma_end <= sigma <= sigma_start

    def edit_with(eraser):
        def edit(h, info):
            if not in_window(info):
                return h
            return eraser(h, info["timestep"], half_rows(info["transformer_options"], h.shape[0], cond_only))
        return edit

    pairs = list(zip(loaded.blocks, erasers))
    text = [(m, e) for m, e in pairs if m.info.hook_point == CONTEXT]
    edit_text = None
    if text:
        family = family_of(model)
        edits = [(edit_with(e), _pooled_shift(m, e, family)) for m, e in text]
        edit_text = _text_edit(edits, ms, in_window, cond_only)
    patched = patch_block_outputs(model, {m.info.hook_point: edit_with(e) for m, e in pairs if m.info.hook_point != CONTEXT},
                                  edit_text)
    # Listed as model patches so ComfyUI's model management moves the SAEs with the model.
    for e in erasers:
        patched.set_model_patch(ErasePatch(e), SAE_PATCH_KEY)
    return patched


def _pooled_shift(member: LoadedSAE, eraser, family: Family) -> PooledShift | None:
    if not family.pooled or not hasattr(eraser, "present"):
        return None
    record = member_training(member).get("pooled")
    return PooledShift.from_record(record, eraser) if record else None


def _text_edit(edits, sampling, in_window, cond_only: bool):
    """edit_text for _call_wrapper: the text states every block reads, edited once per model call
    in the model's dtype on its device (as the model itself would cast them), and the pooled
    vector at the head of `y` moved away from the erased concepts where they are in the prompt."""

    def edit_text(base, x, context, opts, kwargs):
        dtype = base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()
        context = comfy.model_management.cast_to_device(context, x.device, dtype)
        info = _step_info(opts, sampling)
        y = kwargs.get("y")
        for edit, pooled in edits:
            if pooled is not None and y is not None and in_window(info):
                y = pooled(context, y, info["timestep"], half_rows(opts, context.shape[0], cond_only))
            context = edit(context, info)
        if y is not None and y is not kwargs.get("y"):
            kwargs = {**kwargs, "y": y}
        return context, kwargs

    return edit_text


def capture_patch(model, hook_point: str, sink: Callable[[torch.Tensor, dict], None], cond_only: bool = True):
    """Clone of `model` that hands a copy of the block's activations (cond rows only, by default) to `sink`;
    info also carries `step`, the index of the current sigma in the schedule."""
    return capture_patches(model, {hook_point: sink}, cond_only)


def capture_patches(model, sinks: dict[str, Callable[[torch.Tensor, dict], None]], cond_only: bool = True):
    """capture_patch for several blocks at once (one clone, one sampling pass feeds them all)."""

    def edit_for(sink):
        def edit(h, info):
            info["step"] = step_index(info["transformer_options"], info["sigma"])
            rows = half_rows(info["transformer_options"], h.shape[0], cond_only)
            # a copy: DiT blocks add to their input in place, and h may be a view of the next block's input
            sink(h.clone() if rows is None else h[rows.to(h.device)], info)
            return h
        return edit

    return patch_block_outputs(model, {hook: edit_for(sink) for hook, sink in sinks.items()})
