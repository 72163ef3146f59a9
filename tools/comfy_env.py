"""Import the real ComfyUI (pinned copy or $COMFYUI_PATH) for tests, on the CPU."""
import os
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tools/ sits in the repo root
COMFYUI = os.environ.get("COMFYUI_PATH") or os.path.join(REPO, ".comfyui", "ComfyUI")
CACHE = os.path.join(REPO, ".cache", "test-models")


def import_comfy():
    if not os.path.isfile(os.path.join(COMFYUI, "main.py")):
        raise RuntimeError(f"ComfyUI not found at {COMFYUI}: run 'make test' (it provisions it) or set COMFYUI_PATH")
    if COMFYUI not in sys.path:
        sys.path.insert(0, COMFYUI)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    import comfy.cli_args
    import comfy.options
    comfy.cli_args.args.cpu = True  # before model_management is imported: no CUDA here
    import comfy.model_management  # noqa: F401
    import folder_paths
    return folder_paths


def import_pack():
    """Import the pack the way ComfyUI does: the repo folder as a package."""
    import importlib.util
    import_comfy()
    name = "saemnesia_pack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def _randomize(module, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("weight"):  # 1-D weights are norm scales (GroupNorm/LayerNorm)
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def sd15_random_checkpoint(seed: int = 0) -> str:
    """An SD1.5-shaped checkpoint (UNet + CLIP-L + VAE) with random weights, built from
    ComfyUI's own classes and saved with ComfyUI's own save_checkpoint; cached on disk."""
    path = os.path.join(CACHE, f"sd15-random-v2-{seed}.safetensors")
    if os.path.isfile(path):
        return path
    import_comfy()
    import torch

    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    cfg = comfy.supported_models.SD15(dict(SD15_UNET))
    model = cfg.get_model({})
    _randomize(model.diffusion_model, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    clip = comfy.sd.CLIP(cfg.clip_target({}), embedding_directory=None)
    _randomize(clip.cond_stage_model, seed + 1)
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae_model = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    _randomize(vae_model, seed + 2)
    vae = comfy.sd.VAE(sd=vae_model.state_dict())
    os.makedirs(CACHE, exist_ok=True)
    tmp = path + ".tmp"
    comfy.sd.save_checkpoint(tmp, patcher, clip, vae, metadata={"note": "random weights, SAEmnesia tests"})
    os.replace(tmp, path)
    return path


# --- shrunken models of other families ---------------------------------------------------------
# ComfyUI's own config classes (comfy.supported_models) with tiny widths and depths, weights
# randomised as above; each builds in well under a second and samples a 16-32 px latent in a
# fraction of one. The text encoders are ComfyUI's own classes, shrunk through
# `<name>_model_config` model options (their real tokenizers, tiny transformers).
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 32}
CLIP_G = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 64}
T5 = {"d_model": 48, "d_ff": 96, "d_kv": 24, "num_heads": 2, "num_layers": 2}

@dataclass(frozen=True)
class Tiny:
    config: str  # class in comfy.supported_models
    unet: dict  # its unet_config, shrunk
    latent: tuple  # latent dims after the batch, without height and width
    context: tuple[int, int]  # (tokens, width) of the text states CLIPTextEncode gives
    pooled: int | None = None  # width of the pooled text vector, where the family reads one
    extra: dict = field(default_factory=dict)  # other conditioning the family needs


TINY = {
    # SDXL's real block layout (input_blocks.4/5/7/8, middle_block, output_blocks.0-5) at 32 channels:
    # context = CLIP-L (32) + CLIP-G (64) states, y = CLIP-G's pooled (64) + 6 size embeddings (1536)
    "sdxl": Tiny("SDXL", {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                          "legacy": False, "num_classes": "sequential", "adm_in_channels": 64 + 1536, "in_channels": 4,
                          "model_channels": 32, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 1, 1, 1, 1],
                          "channel_mult": [1, 2, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
                          "context_dim": 96, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
                          "use_temporal_attention": False, "use_temporal_resblock": False},
                 (4,), (77, 96), 64),
    # SD3's text: CLIP-L + CLIP-G states padded to 4096 (ComfyUI pads them to T5-XXL's width); pooled 32 + 64
    "sd3": Tiny("SD3", {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
                        "adm_in_channels": 96, "num_patches": 32 * 32, "pos_embed_max_size": 32,
                        "context_embedder_config": {"target": "torch.nn.Linear",
                                                    "params": {"in_features": 4096, "out_features": 128}},
                        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []},
                (16,), (12, 4096), 96),
    # Flux: T5 (48) states, CLIP-L's pooled (32, unprojected)
    "flux": Tiny("Flux", {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
                          "vec_in_dim": 32, "context_in_dim": 48, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 2,
                          "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000,
                          "qkv_bias": True, "patch_size": 2},
                 (16,), (12, 48), 32, {"guidance": 3.5}),
    "chroma": Tiny("Chroma", {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "in_dim": 64, "out_dim": 64,
                              "hidden_dim": 32, "n_layers": 2, "context_in_dim": 48, "hidden_size": 64, "mlp_ratio": 2.0,
                              "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12],
                              "theta": 10000, "qkv_bias": True, "patch_size": 2},
                   (16,), (12, 48), extra={"pooled_output": None}),
    "lumina2": Tiny("Lumina2", {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "cap_feat_dim": 48,
                                "n_layers": 2, "qk_norm": True, "n_heads": 2, "n_kv_heads": 2, "axes_dims": [8, 12, 12],
                                "axes_lens": [300, 64, 64], "rope_theta": 10000.0, "ffn_dim_multiplier": 2.0,
                                "multiple_of": 16, "n_refiner_layers": 1},
                    (16,), (12, 48)),
    "qwenimage": Tiny("QwenImage", {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                                    "num_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2,
                                    "joint_attention_dim": 48, "axes_dims_rope": [8, 12, 12]},
                      (16, 1), (12, 48)),
    # HunyuanDiT reads 77 BERT states by cross-attention and 256 mT5 states (projected, pooled) beside them
    "hunyuandit": Tiny("HunyuanDiT", {"image_model": "hydit", "depth": 2, "hidden_size": 64, "num_heads": 2,
                                      "text_states_dim": 32, "text_states_dim_t5": 48, "input_size": (16, 16),
                                      "patch_size": 2, "in_channels": 4, "mlp_ratio": 2.0},
                       (4,), (77, 32), extra={"attention_mask": (77,), "conditioning_mt5xl": (256, 48),
                                              "attention_mask_mt5xl": (256,)}),
    "auraflow": Tiny("AuraFlow", {"max_seq": 64, "cond_seq_dim": 48, "n_double_layers": 1, "n_layers": 2, "dim": 64,
                                  "n_heads": 2, "patch_size": 2, "in_channels": 4, "out_channels": 4},
                     (4,), (12, 48)),
}


def tiny_model(family: str, seed: int = 0):
    """A MODEL (ModelPatcher) of `family` (a key of TINY) with random weights."""
    import_comfy()
    import torch

    import comfy.model_patcher
    import comfy.supported_models
    cfg = getattr(comfy.supported_models, TINY[family].config)(dict(TINY[family].unet))
    if family == "sdxl":
        cfg.unet_config["num_head_channels"] = 16  # the class sets SDXL's 64, more than a 32-channel level has
    cfg.set_inference_dtype(torch.float32, None)  # as ComfyUI's checkpoint loader does
    model = cfg.get_model({})
    _randomize(model.diffusion_model, seed)
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():  # buffers a checkpoint fills (SD3's pos_embed is torch.empty until loaded)
        for b in model.diffusion_model.buffers():
            if b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=g) * 0.02)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def tiny_latent(family: str, side: int = 16, batch: int = 1):
    """An empty latent of the family's shape (Qwen-Image's has a time axis)."""
    import torch
    return torch.zeros(batch, *TINY[family].latent, side, side)


def tiny_clip(family: str, seed: int = 0):
    """The family's own text encoders (CLIP object), shrunk, random weights; None where they are not
    cheap to build here (Gemma, Qwen and the other LLM encoders need tokenizer files from a checkpoint)."""
    import_comfy()
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip
    from comfy.supported_models_base import ClipTarget
    if family == "sdxl":
        target = ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    elif family == "flux":
        target = ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    elif family == "sd3":
        target = ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.sd3_clip(t5=False))
    else:
        return None
    import torch
    options = {"clip_l_model_config": dict(CLIP_L), "clip_g_model_config": dict(CLIP_G), "t5xxl_model_config": dict(T5),
               "dtype": torch.float32}  # (on a CPU ComfyUI would pick fp16)
    clip = comfy.sd.CLIP(target, embedding_directory=None, model_options=options)
    _randomize(clip.cond_stage_model, seed + 1)
    return clip


def tiny_cond(family: str, seed: int = 0, batch: int = 1):
    """Conditioning as CLIPTextEncode gives it, made by hand (random states of the family's widths)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    tiny = TINY[family]
    extra = {} if tiny.pooled is None else {"pooled_output": torch.randn(batch, tiny.pooled, generator=g)}
    for key, value in tiny.extra.items():  # shapes stand for tensors (masks are all ones), others as given
        if isinstance(value, tuple):
            extra[key] = torch.ones(batch, *value) if key.startswith("attention_mask") else torch.randn(batch, *value, generator=g)
        else:
            extra[key] = value
    return [[torch.randn(batch, *tiny.context, generator=g), extra]]
