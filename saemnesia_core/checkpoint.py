"""One SAE file: a .safetensors holding the weights and, in its metadata, a JSON record
(format version, hook point, model family, sizes, concept index, training record).

Also reads the EleutherAI-sparsify / SAeUron folder format (cfg.json + sae.safetensors),
in which the published SAeUron and SAEmnesia SAEs for SD1.4/1.5 are distributed.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .concepts import ConceptIndex
from .errors import SAEFileError
from .fileio import save_safetensors_atomic
from .sae import TopKSAE

FORMAT = "saemnesia-sae"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class SAEInfo:
    hook_point: str  # module path inside the diffusion model, ComfyUI/LDM naming: "output_blocks.4.1"
    model_family: str = "unknown"  # "sd1", "sdxl", "minicanvas", ...
    concept_index: ConceptIndex = field(default_factory=ConceptIndex)
    training: dict = field(default_factory=dict)
    source: str = ""  # where it was loaded from


@dataclass
class LoadedSAE:
    sae: TopKSAE
    info: SAEInfo

    @property
    def index(self) -> ConceptIndex:
        return self.info.concept_index

    def describe(self) -> str:
        s = self.sae
        return (f"SAE on {self.info.hook_point} ({self.info.model_family}): d_in {s.d_in}, "
                f"{s.n_latents} latents, k {s.k}; {self.index.summary()}")


def save_sae(path: str, sae: TopKSAE, info: SAEInfo):
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "hook_point": info.hook_point,
              "model_family": info.model_family, "d_in": sae.d_in, "n_latents": sae.n_latents, "k": sae.k,
              "reserved_latents": sae.reserved.tolist(), "concept_index": info.concept_index.to_json(), "training": info.training}
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    save_safetensors_atomic(tensors, path, metadata={"format": FORMAT, "saemnesia": json.dumps(record)})


def load_sae(path: str, device="cpu") -> LoadedSAE:
    """Load either format; every failure is an SAEFileError that says what to do."""
    if os.path.isdir(path):
        return load_sparsify_folder(path, device=device)
    if not os.path.isfile(path):
        raise SAEFileError(f"SAE file not found: {os.path.basename(path)}. Put .safetensors SAEs in the 'sae' models folder.")
    if not path.lower().endswith(".safetensors"):
        raise SAEFileError(f"{os.path.basename(path)} is not a .safetensors file. SAEmnesia loads only safetensors "
                           "(never pickle: a .pt/.ckpt/.bin can run code). Convert it to safetensors first.")
    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT and "saemnesia" not in meta:
        # a bare sae.safetensors from sparsify, with its cfg.json beside it
        if os.path.isfile(os.path.join(os.path.dirname(path), "cfg.json")):
            return load_sparsify_folder(os.path.dirname(path), device=device)
        raise SAEFileError(f"{os.path.basename(path)} is a safetensors file but not an SAEmnesia SAE (no 'saemnesia' "
                           "metadata) and has no cfg.json beside it. Save SAEs with SAEmnesia, or keep a sparsify "
                           "SAE's cfg.json next to its sae.safetensors.")
    try:
        record = json.loads(meta["saemnesia"])
    except (KeyError, json.JSONDecodeError) as e:
        raise SAEFileError(f"{os.path.basename(path)}: its metadata record is not valid JSON ({e}); the file is damaged. "
                           "Re-create or re-download it.") from None
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SAEFileError(f"{os.path.basename(path)} has SAE format version {version}; this SAEmnesia reads up to "
                           f"{FORMAT_VERSION}. Update the SAEmnesia node pack.")
    tensors = _load_tensors(path)
    sae = _build(tensors, {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"},
                 int(record.get("k", 0)), os.path.basename(path), device)
    for key in ("d_in", "n_latents"):
        if key in record and int(record[key]) != getattr(sae, key):
            raise SAEFileError(f"{os.path.basename(path)}: metadata says {key}={record[key]} but the weights have "
                               f"{getattr(sae, key)}; the file is inconsistent. Re-create it.")
    try:
        sae.set_reserved(record.get("reserved_latents", []))
    except (TypeError, ValueError) as e:
        raise SAEFileError(f"{os.path.basename(path)}: bad reserved_latents ({e}); the file is damaged. Re-create it.") from None
    try:
        index = ConceptIndex.from_json(record.get("concept_index", {}))
        index.validate(sae.n_latents)
    except SAEFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed index is a file problem
        raise SAEFileError(f"{os.path.basename(path)}: bad concept index: {e}") from None
    hook = record.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFileError(f"{os.path.basename(path)} does not say which block it was trained on (no hook_point).")
    info = SAEInfo(hook, record.get("model_family", "unknown"), index, record.get("training", {}), path)
    return LoadedSAE(sae, info)


def read_safetensors_metadata(path: str) -> dict:
    """Read only the header, refusing pickles and truncated files with a clear message."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SAEFileError(f"{name} is empty or truncated ({size} bytes). Re-download or re-create it.")
        n = struct.unpack("<Q", head)[0]
        first = f.read(1)
        if first != b"{" or n > _MAX_HEADER or 8 + n > size:
            if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
                raise SAEFileError(f"{name} is a pickle/zip (torch.save) file renamed to .safetensors. SAEmnesia never "
                                   "loads pickles; convert it with safetensors.torch.save_file.")
            # no header length or size in the message: they are bytes of a file that may not be an SAE at all
            raise SAEFileError(f"{name} is truncated or not a safetensors file. Re-download or re-create it.")
        raw = first + f.read(n - 1)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SAEFileError(f"{name}: the safetensors header is corrupt. Re-download or re-create it.") from None
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        meta = header.get("__metadata__") or {}
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        raise SAEFileError(f"{name}: the safetensors header is corrupt. Re-download or re-create it.") from None
    if 8 + n + end > size:
        raise SAEFileError(f"{name} is truncated: its tensors need {8 + n + end} bytes, the file has {size}. "
                           "Re-download or re-create it.")
    return meta


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFileError(f"{os.path.basename(path)} could not be read as safetensors ({e}). Re-download or re-create it.") from None


def _build(tensors, names, k, label, device) -> TopKSAE:
    missing = [n for n in names.values() if n not in tensors]
    if missing:
        raise SAEFileError(f"{label} lacks tensors {missing}; it is not a TopK SAE this pack can use.")
    W_enc, b_enc, W_dec, b_dec = (tensors[names[n]].float() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    n_lat, d_in = W_dec.shape if W_dec.dim() == 2 else (0, 0)
    if W_dec.dim() != 2 or W_enc.shape != (n_lat, d_in) or b_enc.shape != (n_lat,) or b_dec.shape != (d_in,):
        raise SAEFileError(f"{label}: tensor shapes do not fit one SAE (W_enc {tuple(W_enc.shape)}, b_enc "
                           f"{tuple(b_enc.shape)}, W_dec {tuple(W_dec.shape)}, b_dec {tuple(b_dec.shape)}).")
    if not (0 < k <= n_lat):
        raise SAEFileError(f"{label}: k={k} is not between 1 and the number of latents ({n_lat}).")
    for n, t in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
        if not torch.isfinite(t).all():
            raise SAEFileError(f"{label}: tensor {n} contains NaN or infinite values; the SAE is broken "
                               "(training diverged?). Re-train or re-download it.")
    return TopKSAE.from_tensors(W_enc.to(device), b_enc.to(device), W_dec.to(device), b_dec.to(device), k)


# --- SAeUron / sparsify folders ---------------------------------------------------------
_DIFFUSERS_BLOCK = re.compile(r"(?:^|\.)(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)$")


def diffusers_to_ldm(name: str, layers_per_block: int = 2) -> str:
    """Map a diffusers UNet attention path to ComfyUI/LDM naming.

    SD1.x and SDXL both have 2 res layers per down level (+ a downsample) and 3 per up
    level, so down_blocks.i.attentions.j -> input_blocks.(3i+j+1).1 and
    up_blocks.i.attentions.j -> output_blocks.(3i+j).1. LDM names pass through.
    """
    name = name.strip()
    if name.startswith("unet."):
        name = name[5:]
    if re.fullmatch(r"(input_blocks|output_blocks)\.\d+\.\d+|middle_block\.1", name):
        return name
    if re.fullmatch(r"mid_block\.attentions\.0", name):
        return "middle_block.1"
    m = _DIFFUSERS_BLOCK.search(name)
    if not m:
        raise SAEFileError(f"hook point '{name}' is neither an LDM block (e.g. output_blocks.4.1) nor a diffusers "
                           "attention block (e.g. up_blocks.1.attentions.1)")
    kind, i, j = m.group(1), int(m.group(2)), int(m.group(3))
    per = layers_per_block + 1
    if kind == "down_blocks":
        return f"input_blocks.{per * i + j + 1}.1"
    return f"output_blocks.{per * i + j}.1"


def _is_block_name(name: str) -> bool:
    try:
        diffusers_to_ldm(name)
        return True
    except SAEFileError:
        return False


def load_sparsify_folder(folder: str, device="cpu", hook_point: str | None = None) -> LoadedSAE:
    cfg_path = os.path.join(folder, "cfg.json")
    w_path = os.path.join(folder, "sae.safetensors")
    label = os.path.basename(os.path.normpath(folder))  # messages name the folder, never a server path
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise SAEFileError(f"{label} is not a sparsify/SAeUron SAE folder: it needs cfg.json and sae.safetensors.")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # the position only: the decoder's message could quote bytes of the file
        where = f"line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else f"byte {e.start}"
        raise SAEFileError(f"{label}/cfg.json is not valid UTF-8 JSON (at {where}). Re-download it.") from None
    read_safetensors_metadata(w_path)
    tensors = _load_tensors(w_path)
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
    sae = _build(tensors, names, int(cfg.get("k", 0)), os.path.basename(folder), device)
    if "d_in" in cfg and int(cfg["d_in"]) != sae.d_in:
        raise SAEFileError(f"{label}/cfg.json says d_in={cfg['d_in']} but the weights have {sae.d_in}.")
    given = hook_point or cfg.get("hookpoint")
    if not given and not _is_block_name(label):
        # sparsify stores the block only in the folder's name: a renamed folder has lost it
        raise SAEFileError(f"The SAeUron/sparsify SAE folder '{label}' does not say which UNet block it was trained "
                           "on: such folders are named after their hook point. Rename the folder back to its block "
                           "name (e.g. unet.up_blocks.1.attentions.1 for objects, unet.up_blocks.1.attentions.2 for "
                           "styles), or add \"hookpoint\": \"unet.up_blocks.1.attentions.1\" to its cfg.json.")
    hook = diffusers_to_ldm(given or label)
    return LoadedSAE(sae, SAEInfo(hook, cfg.get("model_family", "unknown"), ConceptIndex(), {"imported_from": "sparsify", "cfg": cfg}, folder))
