"""Import the real ComfyUI (pinned copy or $COMFYUI_PATH) for tests, on the CPU."""
import os
import sys

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
