"""Load MiniCanvas Demo Model: the bundled tiny text-to-image model as MODEL, CLIP and VAE.

The stock CLIPTextEncode / KSampler / VAEDecode nodes run it like any SD1 model; the
empty latent is ``EmptyChromaRadianceLatentImage`` 32 x 32 (3-channel pixel space).
The work is in nodes/demo/minicanvas_model.py (built from ComfyUI's own classes).
"""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..sae_type import CATEGORY, PREFIX, schema

DEFAULT_FILE = "demo_unet.safetensors"


def _models_dir() -> str:
    from saemnesia_demo.unet import DEFAULT_PATH
    return str(DEFAULT_PATH.parent)


def _choices() -> list[str]:
    from . import minicanvas_model as comfy_model
    files = comfy_model.unet_files(_models_dir())
    return files or [DEFAULT_FILE]  # a missing file still gets a clear error at run time


def _path(unet_name: str) -> str:
    folder = os.path.realpath(_models_dir())
    path = os.path.realpath(os.path.join(folder, unet_name))
    if os.path.dirname(path) != folder:
        raise ValueError(f"'{unet_name}' is not a file in {folder}")
    return path


class LoadDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        choices = _choices()
        return schema(
            search_aliases=["minicanvas", "demo model", "toy model", "unlearn demo"],
            node_id=f"{PREFIX}LoadDemoModel",
            display_name="Load MiniCanvas Demo Model",
            category=CATEGORY,
            description="The bundled MiniCanvas demo models (32x32 px, 6 shapes x 6 styles, prompts like "
                        "'a circle in stripes style'): the UNet (SD layout, sample with ddim / ddim_uniform) or "
                        "MiniCanvas-DiT (Flux layout, sample with euler / simple) as MODEL, MiniLM text encoder as "
                        "CLIP, pixel-space VAE. Use EmptyChromaRadianceLatentImage 32x32 as the empty latent. Loads "
                        "offline, safetensors only.",
            inputs=[
                io.Combo.Input("unet_name", options=choices,
                               default=DEFAULT_FILE if DEFAULT_FILE in choices else choices[0],
                               tooltip="A MiniCanvas model file in the pack's models/minicanvas folder: "
                                       "demo_unet (SD layout) or demo_dit (Flux layout); the file says which."),
            ],
            outputs=[io.Model.Output(tooltip="The demo model (32x32 px pixel space); wire to KSampler or Erase Concepts."),
                     io.Clip.Output(tooltip="Its MiniLM text encoder, for CLIP Text Encode (prompts of at most 16 tokens)."),
                     io.Vae.Output(tooltip="ComfyUI's pixel-space VAE: VAE Decode turns the 32x32 latent into the picture.")],
        )

    @classmethod
    def fingerprint_inputs(cls, unet_name=DEFAULT_FILE, **_):
        try:
            st = os.stat(_path(unet_name))
            return f"{unet_name}:{st.st_mtime_ns}:{st.st_size}"  # a re-exported file is reloaded
        except (OSError, ValueError):
            return unet_name

    @classmethod
    def execute(cls, unet_name=DEFAULT_FILE) -> io.NodeOutput:
        from . import minicanvas_model as comfy_model
        model, clip, vae = comfy_model.load_all(_path(unet_name))
        return io.NodeOutput(model, clip, vae)

