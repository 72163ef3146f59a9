"""One SAE file: a .safetensors holding the weights and, in its metadata, a JSON record
(format version, hook point, model family, sizes, concept index, training record).

A file may also hold an SAE *set*: one SAE per hook point (format version 2), so that a
concept can be erased at every block where the prompt writes it, with one file and one
Load SAE. The members share concept names; each has its own latents and index numbers.

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
FORMAT_VERSION = 2  # 1: one SAE; 2: a set of SAEs, one per hook point (written only for sets)
_MAX_HEADER = 100 * 1024 * 1024
# The hook point of an SAE on the text conditioning itself: the token states that every
# cross-attention of every transformer block reads (keys and values), rather than one block's output.
CONTEXT = "context"


@dataclass
class SAEInfo:
    hook_point: str  # module path inside the diffusion model, ComfyUI/LDM naming: "output_blocks.4.1"
    model_family: str = "unknown"  # "sd1", "sdxl", "minicanvas", ...
    concept_index: ConceptIndex = field(default_factory=ConceptIndex)
    training: dict = field(default_factory=dict)
    source: str = ""  # where it was loaded from


@dataclass
class LoadedSAE:
    """One SAE on one block; for a file holding a set, the first member, with every member
    (itself first) in `members`."""

    sae: TopKSAE
    info: SAEInfo
    members: list["LoadedSAE"] = field(default_factory=list, repr=False)

    @property
    def index(self) -> ConceptIndex:
        return self.info.concept_index

    @property
    def blocks(self) -> list["LoadedSAE"]:
        """Every SAE of the file, one per hook point (just this one for a one-block file)."""
        return self.members or [self]

    @property
    def hook_points(self) -> list[str]:
        return [m.info.hook_point for m in self.blocks]

    def describe(self) -> str:
        s = self.sae
        if len(self.blocks) > 1:
            return (f"SAE set on {len(self.blocks)} blocks ({', '.join(self.hook_points)}; {self.info.model_family}): "
                    f"d_in {s.d_in}, {s.n_latents} latents, k {s.k} each; {self.index.summary()}")
        return (f"SAE on {self.info.hook_point} ({self.info.model_family}): d_in {s.d_in}, "
                f"{s.n_latents} latents, k {s.k}; {self.index.summary()}")


def _member_record(sae: TopKSAE, info: SAEInfo) -> dict:
    return {"hook_point": info.hook_point, "d_in": sae.d_in, "n_latents": sae.n_latents, "k": sae.k,
            "reserved_latents": sae.reserved.tolist(), "concept_index": info.concept_index.to_json()}


def _tensors_of(sae: TopKSAE, prefix: str = "") -> dict:
    return {prefix + n: getattr(sae, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}


def save_sae(path: str, sae: TopKSAE, info: SAEInfo):
    record = {"format": FORMAT, "format_version": 1, "model_family": info.model_family,
              **_member_record(sae, info), "training": info.training}
    save_safetensors_atomic(_tensors_of(sae), path, metadata={"format": FORMAT, "saemnesia": json.dumps(record)})


def save_sae_set(path: str, members: list[tuple[TopKSAE, SAEInfo]], training: dict | None = None):
    """One file holding one SAE per hook point (a one-member set is saved as a plain SAE)."""
    if len(members) == 1:
        sae, info = members[0]
        return save_sae(path, sae, SAEInfo(info.hook_point, info.model_family, info.concept_index,
                                           training if training is not None else info.training))
    hooks = [info.hook_point for _, info in members]
    if len(set(hooks)) != len(hooks):
        raise SAEFileError(f"an SAE set needs one SAE per block; {hooks} repeats a block")
    record = {"format": FORMAT, "format_version": 2, "model_family": members[0][1].model_family,
              "blocks": [_member_record(sae, info) for sae, info in members],
              "training": training if training is not None else members[0][1].training}
    tensors = {}
    for i, (sae, _) in enumerate(members):
        tensors.update(_tensors_of(sae, f"blocks.{i}."))
    save_safetensors_atomic(tensors, path, metadata={"format": FORMAT, "saemnesia": json.dumps(record)})


def load_sae(path: str, device="cpu") -> LoadedSAE:
    """Load either format; every failure is an SAEFileError that says what to do."""
    if os.path.isdir(path):
        return load_sparsify_folder(path, device=device)
    if not os.path.isfile(path):
        raise SAEFileError(f"SAE file not found: {path}. Put .safetensors SAEs in the 'sae' models folder.")
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
    if not isinstance(record, dict):
        raise SAEFileError(f"{os.path.basename(path)}: its metadata record is not a JSON object; the file is damaged. "
                           "Re-create or re-download it.")
    tensors = _load_tensors(path)
    name = os.path.basename(path)
    family, training = record.get("model_family", "unknown"), record.get("training", {})
    if version >= 2:
        parts = record.get("blocks")
        if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
            raise SAEFileError(f"{name}: an SAE set file must list its blocks; the file is damaged. Re-create it.")
        members = [_member(tensors, p, f"blocks.{i}.", f"{name} block {i}", path, family, training, device)
                   for i, p in enumerate(parts)]
        hooks = [m.info.hook_point for m in members]
        if len(set(hooks)) != len(hooks):
            raise SAEFileError(f"{name}: its SAE set names a block twice ({hooks}); the file is damaged. Re-create it.")
        first = members[0]
        return LoadedSAE(first.sae, first.info, members)
    return _member(tensors, record, "", name, path, family, training, device)


def _member(tensors, record: dict, prefix: str, label: str, path: str, family, training, device) -> LoadedSAE:
    """One SAE of a file: its tensors (under `prefix`) and its part of the metadata record."""
    sae = _build(tensors, {n: prefix + n for n in ("W_enc", "b_enc", "W_dec", "b_dec")},
                 int(record.get("k", 0)), label, device)
    for key in ("d_in", "n_latents"):
        if key in record and int(record[key]) != getattr(sae, key):
            raise SAEFileError(f"{label}: metadata says {key}={record[key]} but the weights have "
                               f"{getattr(sae, key)}; the file is inconsistent. Re-create it.")
    try:
        sae.set_reserved(record.get("reserved_latents", []))
    except (TypeError, ValueError) as e:
        raise SAEFileError(f"{label}: bad reserved_latents ({e}); the file is damaged. Re-create it.") from None
    try:
        index = ConceptIndex.from_json(record.get("concept_index", {}))
        index.validate(sae.n_latents)
    except SAEFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed index is a file problem
        raise SAEFileError(f"{label}: bad concept index: {e}") from None
    hook = record.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFileError(f"{label} does not say which block it was trained on (no hook_point).")
    return LoadedSAE(sae, SAEInfo(hook, family, index, training, path))


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
            raise SAEFileError(f"{name} is truncated or not a safetensors file (header says {n} bytes, file has "
                               f"{size}). Re-download or re-create it.")
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


def load_sparsify_folder(folder: str, device="cpu", hook_point: str | None = None) -> LoadedSAE:
    cfg_path = os.path.join(folder, "cfg.json")
    w_path = os.path.join(folder, "sae.safetensors")
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise SAEFileError(f"{folder} is not a sparsify/SAeUron SAE folder: it needs cfg.json and sae.safetensors.")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEFileError(f"{cfg_path} is not valid JSON ({e}).") from None
    read_safetensors_metadata(w_path)
    tensors = _load_tensors(w_path)
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
    sae = _build(tensors, names, int(cfg.get("k", 0)), os.path.basename(folder), device)
    if "d_in" in cfg and int(cfg["d_in"]) != sae.d_in:
        raise SAEFileError(f"{cfg_path} says d_in={cfg['d_in']} but the weights have {sae.d_in}.")
    hook = diffusers_to_ldm(hook_point or cfg.get("hookpoint") or os.path.basename(os.path.normpath(folder)))
    return LoadedSAE(sae, SAEInfo(hook, cfg.get("model_family", "unknown"), ConceptIndex(), {"imported_from": "sparsify", "cfg": cfg}, folder))
