"""Convert a published SAE for SDXL or Flux into the pack's safetensors format, once, outside ComfyUI.

The pack itself loads only safetensors and JSON. These SAEs are published as pickles
(`state_dict.pth`, `mean.pt`) beside a `config.json`, in the TopK layout of OpenAI's
sparse_autoencoder (`encoder.weight` [latents, d], `decoder.weight` [d, latents], `pre_bias`,
`latent_bias`; config `n_dirs_local`, `d_model`, `k`):

- Surkov et al., "Unpacking SDXL Turbo" (`surkovv/sdxl-unbox`): one folder per SDXL block, named
  `unet.<block>_k10_hidden5120_...` with the files in its `final/` subfolder; trained on the
  block's update (output minus input); `mean.pt` holds each latent's mean activation.
- `antoniomari/SAE_flux_18`: Flux's `transformer_blocks.18` (ComfyUI's double_blocks.18), image
  stream, on the block's update; same files.

The pickles are read with `torch.load(..., weights_only=True)`, which unpickles tensors and plain
containers only and refuses anything that would run code. Usage:

    python scripts/convert_published_sae.py PATH/TO/FOLDER models/sae/sdxl_down_2_1.safetensors
    python scripts/convert_published_sae.py PATH/TO/SAE_flux_18 models/sae/flux_18.safetensors --family flux

The block is read from the folder's name (or `--hook-point`); the file records it in diffusers'
naming with ':update', which the pack maps to ComfyUI's blocks through ComfyUI's own key map
(down_blocks.2.attentions.1 -> input_blocks.8.1). The SAE has no concept index: erase its latents
as `neuron:<index>`, or train one with Train SAE from Prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from saemnesia_core import SAEError, SAEInfo, TopKSAE, save_sae  # noqa: E402
from saemnesia_core.concepts import ConceptIndex  # noqa: E402

_SDXL_BLOCK = re.compile(r"(down_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.0|up_blocks\.\d+\.attentions\.\d+)")
_FLUX_BLOCK = re.compile(r"(?<!single_)(transformer_blocks\.\d+)")
FAMILIES = {"sdxl": "sdxl", "flux": "flux"}  # --family -> the model_family recorded (ComfyUI's config class)


def _files(folder: str) -> str:
    """The folder holding config.json and state_dict.pth (Surkov's keep them in final/)."""
    for candidate in (folder, os.path.join(folder, "final")):
        if os.path.isfile(os.path.join(candidate, "config.json")) and os.path.isfile(os.path.join(candidate, "state_dict.pth")):
            return candidate
    raise SAEError(f"{folder} holds no config.json and state_dict.pth (nor does its final/ folder); point at the "
                   "SAE's folder as published.")


def _load_pickle(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refuses anything but tensors and containers
        raise SAEError(f"{os.path.basename(path)} could not be read as plain tensors ({type(e).__name__}: "
                       f"{str(e)[:200]}). Only pickles of tensors are converted; a file that needs code to load is "
                       "refused.") from None


def _whole(cfg: dict, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEError(f"config.json: {key} is {value!r}, not a positive whole number.")
    return value


def read_published(folder: str) -> tuple[TopKSAE, dict, torch.Tensor | None]:
    """(the SAE, its config, each latent's mean activation or None) of a published folder."""
    where = _files(folder)
    with open(os.path.join(where, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise SAEError("config.json is not a JSON object.")
    d, n, k = _whole(cfg, "d_model"), _whole(cfg, "n_dirs_local"), _whole(cfg, "k")
    if k > n:
        raise SAEError(f"config.json: k={k} is more than the {n} latents.")
    state = _load_pickle(os.path.join(where, "state_dict.pth"))
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    want = {"encoder.weight": (n, d), "decoder.weight": (d, n), "pre_bias": (d,), "latent_bias": (n,)}
    if not isinstance(state, dict):
        raise SAEError(f"state_dict.pth holds a {type(state).__name__}, not a state dict.")
    for key, shape in want.items():
        t = state.get(key)
        if not torch.is_tensor(t) or tuple(t.shape) != shape:
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise SAEError(f"state_dict.pth: {key} is {got}, expected {shape} (d_model {d}, n_dirs_local {n}).")
    sae = TopKSAE.from_tensors(state["encoder.weight"].float(), state["latent_bias"].float(),
                               state["decoder.weight"].float().T.contiguous(), state["pre_bias"].float(), k)
    means = None
    mean_path = os.path.join(where, "mean.pt")
    if os.path.isfile(mean_path):
        means = _load_pickle(mean_path)
        if not torch.is_tensor(means) or tuple(means.shape) != (n,):
            got = tuple(means.shape) if torch.is_tensor(means) else type(means).__name__
            raise SAEError(f"mean.pt is {got}, expected one mean activation per latent ({n},).")
    return sae, cfg, means


def hook_point_of(folder: str, family: str) -> str:
    """The block in the folder's name, as the file records it (diffusers naming, on its update)."""
    name = os.path.basename(os.path.normpath(folder))
    if name == "final":
        name = os.path.basename(os.path.dirname(os.path.normpath(folder)))
    pattern = _SDXL_BLOCK if family == "sdxl" else _FLUX_BLOCK
    m = pattern.search(name)
    if m is None and family == "flux" and re.search(r"flux_18|_18$", name):
        return "transformer_blocks.18:update"  # antoniomari/SAE_flux_18 names its block only by number
    if m is None:
        raise SAEError(f"The folder name '{name}' does not say which block the SAE reads; give --hook-point "
                       "(e.g. down_blocks.2.attentions.1:update, transformer_blocks.18:update).")
    return f"{m.group(1)}:update"


def convert(folder: str, out: str, family: str, hook_point: str | None = None) -> str:
    if family not in FAMILIES:
        raise SAEError(f"--family {family!r}: use one of {', '.join(FAMILIES)}.")
    if not out.endswith(".safetensors"):
        raise SAEError(f"{out}: the pack loads .safetensors files; name the output <name>.safetensors.")
    sae, cfg, means = read_published(folder)
    hook = hook_point or hook_point_of(folder, family)
    training = {"imported_from": "OpenAI-style TopK SAE (config.json + state_dict.pth)", "config": cfg,
                "activation": "block update (output minus input)" if hook.endswith(":update") else "block output"}
    if means is not None:
        training["latent_means"] = [float(f"{v:.5g}") for v in means.float().tolist()]
    save_sae(out, sae, SAEInfo(hook, FAMILIES[family], ConceptIndex(), training))
    return hook


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="the published SAE's folder (config.json, state_dict.pth, mean.pt)")
    ap.add_argument("out", help="the .safetensors file to write (e.g. in ComfyUI's models/sae)")
    ap.add_argument("--family", default="sdxl", help="sdxl (Surkov et al.) or flux (SAE_flux_18); default sdxl")
    ap.add_argument("--hook-point", default=None, help="the block, when the folder's name does not say it")
    args = ap.parse_args(argv)
    try:
        hook = convert(args.folder, args.out, args.family, args.hook_point)
    except (SAEError, OSError, json.JSONDecodeError) as e:
        sys.exit(f"convert_published_sae: {e}")
    print(f"wrote {args.out}: {args.family} SAE on {hook}")


if __name__ == "__main__":
    main()
