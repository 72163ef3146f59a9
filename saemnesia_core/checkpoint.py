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
from .errors import SAEError, SAEFileError
from .fileio import save_safetensors_atomic
from .sae import TopKSAE

FORMAT = "saemnesia-sae"
FORMAT_VERSION = 2  # 1: one SAE; 2: a set of SAEs, one per hook point (written only for sets)
_MAX_HEADER = 100 * 1024 * 1024
# The hook point of an SAE on the text conditioning itself: the token states that every
# cross-attention of every transformer block reads (keys and values), rather than one block's output.
CONTEXT = "context"
STATES = "concept_states"  # [concepts, timestep buckets, d_in]: each concept's mean SAE input
HANDOVERS = "concept_handovers"  # [concepts, d_in + 1, d_in]: each concept's handover map to its anchor


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
            parts = "; ".join(f"{m.info.hook_point}: d_in {m.sae.d_in}, {m.sae.n_latents} latents, k {m.sae.k}"
                              for m in self.blocks)
            return f"SAE set on {len(self.blocks)} hook points ({self.info.model_family}) - {parts}; {self.index.summary()}"
        return (f"SAE on {self.info.hook_point} ({self.info.model_family}): d_in {s.d_in}, "
                f"{s.n_latents} latents, k {s.k}; {self.index.summary()}")


def _with_state(info: SAEInfo) -> list[str]:
    return [n for n, c in info.concept_index.concepts.items() if c.state is not None]


def _with_handover(info: SAEInfo) -> list[list[str]]:
    return [[n, c.handover_anchor] for n, c in info.concept_index.concepts.items() if c.handover is not None]


def _member_record(sae: TopKSAE, info: SAEInfo) -> dict:
    record = {"hook_point": info.hook_point, "d_in": sae.d_in, "n_latents": sae.n_latents, "k": sae.k,
              "reserved_latents": sae.reserved.tolist(), "concept_index": info.concept_index.to_json()}
    if _with_state(info):
        record["concept_states"] = _with_state(info)  # rows of the concept_states tensor, in order
    if _with_handover(info):
        record[HANDOVERS] = _with_handover(info)  # [concept, its anchor] per row of that tensor
    return record


def _tensors_of(sae: TopKSAE, info: SAEInfo, prefix: str = "") -> dict:
    tensors = {prefix + n: getattr(sae, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if _with_state(info):
        concepts = info.concept_index.concepts
        tensors[prefix + STATES] = torch.stack([concepts[n].state.float() for n in _with_state(info)])
    if _with_handover(info):
        concepts = info.concept_index.concepts
        # half precision: a map is (d_in + 1) x d_in per concept (7 MB for the demo's twelve in
        # fp32), and fp16's 3 significant digits are far finer than the moves it predicts
        tensors[prefix + HANDOVERS] = torch.stack([concepts[n].handover.half() for n, _ in _with_handover(info)])
    return tensors


def save_sae(path: str, sae: TopKSAE, info: SAEInfo):
    record = {"format": FORMAT, "format_version": 1, "model_family": info.model_family,
              **_member_record(sae, info), "training": info.training}
    save_safetensors_atomic(_tensors_of(sae, info), path, metadata={"format": FORMAT, "saemnesia": json.dumps(record)})


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
    for i, (sae, info) in enumerate(members):
        tensors.update(_tensors_of(sae, info, f"blocks.{i}."))
    save_safetensors_atomic(tensors, path, metadata={"format": FORMAT, "saemnesia": json.dumps(record)})


def load_sae(path: str, device="cpu") -> LoadedSAE:
    """Load either format; every failure is an SAEFileError that says what to do."""
    if os.path.isdir(path):
        return load_sparsify_folder(path, device=device)
    if not os.path.isfile(path):
        raise SAEFileError(f"SAE file not found: {os.path.basename(path)}. Put .safetensors SAEs in the 'sae' models folder.")
    label = os.path.basename(path)
    if not path.lower().endswith(".safetensors"):
        raise SAEFileError(f"{label} is not a .safetensors file. SAEmnesia loads only safetensors "
                           "(never pickle: a .pt/.ckpt/.bin can run code). Convert it to safetensors first.")
    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT and "saemnesia" not in meta:
        # a bare sae.safetensors from sparsify, with its cfg.json beside it
        if os.path.isfile(os.path.join(os.path.dirname(path), "cfg.json")):
            return load_sparsify_folder(os.path.dirname(path), device=device)
        raise SAEFileError(f"{label} is a safetensors file but not an SAEmnesia SAE (no 'saemnesia' "
                           "metadata) and has no cfg.json beside it. Save SAEs with SAEmnesia, or keep a sparsify "
                           "SAE's cfg.json next to its sae.safetensors.")
    record = _json_object(meta.get("saemnesia"), f"{label}: its metadata record")
    version = record.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise SAEFileError(f"{label}: format_version is {_show(version)}, not a whole number; the file is damaged "
                           "or was not written by SAEmnesia. Re-create or re-download it.")
    if version > FORMAT_VERSION:
        raise SAEFileError(f"{label} has SAE format version {version}; this SAEmnesia reads up to "
                           f"{FORMAT_VERSION}. Update the SAEmnesia node pack.")
    family, training = record.get("model_family", "unknown"), record.get("training", {})
    if not isinstance(family, str) or not isinstance(training, dict):
        raise SAEFileError(f"{label}: model_family must be text and training a JSON object; the file is damaged. "
                           "Re-create it.")
    if version < 2:
        sizes = _check_sizes(record, label)
        return _member(_load_tensors(path), record, sizes, "", label, path, family, training, device)
    parts = record.get("blocks")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise SAEFileError(f"{label}: an SAE set file must list its blocks as JSON objects; the file is damaged. "
                           "Re-create it.")
    sizes = [_check_sizes(part, f"{label} block {i}") for i, part in enumerate(parts)]
    tensors = _load_tensors(path)
    members = [_member(tensors, part, sizes[i], f"blocks.{i}.", f"{label} block {i}", path, family, training, device)
               for i, part in enumerate(parts)]
    hooks = [m.info.hook_point for m in members]
    if len(set(hooks)) != len(hooks):
        raise SAEFileError(f"{label}: its SAE set names a block twice ({_show(hooks)}); the file is damaged. Re-create it.")
    return LoadedSAE(members[0].sae, members[0].info, members)


def _check_sizes(record: dict, label: str) -> dict:
    """k and sizes of one SAE's record ({"k", and "d_in"/"n_latents" where given}), checked
    before any weight is read: a bad k would otherwise surface only when sampling."""
    sizes = {"k": _whole(record.get("k"), "k", label)}
    sizes.update({key: _whole(record[key], key, label) for key in ("d_in", "n_latents") if key in record})
    if sizes.get("n_latents") is not None and not 0 < sizes["k"] <= sizes["n_latents"]:
        raise SAEFileError(f"{label}: k={sizes['k']} is not between 1 and the number of latents "
                           f"({sizes['n_latents']}); the file is damaged. Re-create it.")
    return sizes


def _member(tensors, record: dict, sizes: dict, prefix: str, label: str, path: str, family, training,
            device) -> LoadedSAE:
    """One SAE of a file: its tensors (under `prefix`) and its part of the metadata record, whose
    sizes _check_sizes has read."""
    sae = _build(tensors, {n: prefix + n for n in ("W_enc", "b_enc", "W_dec", "b_dec")}, sizes["k"], label, device)
    for key, value in sizes.items():
        if key != "k" and value != getattr(sae, key):
            raise SAEFileError(f"{label}: metadata says {key}={value} but the weights have "
                               f"{getattr(sae, key)}; the file is inconsistent. Re-create it.")
    reserved = record.get("reserved_latents", [])
    if not isinstance(reserved, list):
        raise SAEFileError(f"{label}: reserved_latents is {_show(reserved)}, not a list of latent indices; "
                           "the file is damaged. Re-create it.")
    try:
        sae.set_reserved([_whole(i, "a reserved latent", label) for i in reserved])
    except ValueError as e:
        raise SAEFileError(f"{label}: bad reserved_latents ({e}); the file is damaged. Re-create it.") from None
    try:
        index = ConceptIndex.from_json(record.get("concept_index", {}))
        index.validate(sae.n_latents)
    except SAEError as e:
        raise SAEFileError(f"{label}: bad concept index: {e}") from None
    except Exception as e:  # noqa: BLE001 - any other malformed index is a file problem too
        raise SAEFileError(f"{label}: bad concept index ({type(e).__name__}: {e}); re-create the SAE file.") from None
    _attach_states(index, tensors, record, prefix, sae.d_in, label)
    _attach_handovers(index, tensors, record, prefix, sae.d_in, label)
    hook = record.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFileError(f"{label} does not say which block it was trained on (no hook_point).")
    return LoadedSAE(sae, SAEInfo(hook, family, index, training, path))


def _attach_states(index: ConceptIndex, tensors, record: dict, prefix: str, d_in: int, label: str):
    """Each concept's mean SAE input, if the file has them (files from before simply have none)."""
    names = record.get("concept_states")
    if names is None:
        return
    fix = "the file is damaged. Re-create it."
    if not isinstance(names, list) or not all(isinstance(n, str) and n in index.concepts for n in names) \
            or len(set(names)) != len(names):
        raise SAEFileError(f"{label}: concept_states must list concepts of its index, each once; {fix}")
    states = tensors.get(prefix + STATES)
    buckets = max(1, len(index.timesteps))
    if states is None or tuple(states.shape) != (len(names), buckets, d_in):
        shape = None if states is None else tuple(states.shape)
        raise SAEFileError(f"{label}: the concept_states tensor is {shape}, expected "
                           f"{(len(names), buckets, d_in)}; {fix}")
    states = states.float()
    if not torch.isfinite(states).all():
        raise SAEFileError(f"{label}: concept_states holds NaN or inf; {fix}")
    for name, state in zip(names, states):
        index.concepts[name].state = state


def _attach_handovers(index: ConceptIndex, tensors, record: dict, prefix: str, d_in: int, label: str):
    """Each concept's handover map to its anchor, if the file has them (older files have none)."""
    rows = record.get(HANDOVERS)
    if rows is None:
        return
    fix = "the file is damaged. Re-create it."
    ok = isinstance(rows, list) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(n, str) and n in index.concepts for n in r)
        and r[0] != r[1] for r in rows)
    if not ok or len({r[0] for r in rows}) != len(rows):
        raise SAEFileError(f"{label}: {HANDOVERS} must list [concept, anchor] pairs of its index, each concept "
                           f"once; {fix}")
    maps = tensors.get(prefix + HANDOVERS)
    if maps is None or tuple(maps.shape) != (len(rows), d_in + 1, d_in):
        shape = None if maps is None else tuple(maps.shape)
        raise SAEFileError(f"{label}: the {HANDOVERS} tensor is {shape}, expected {(len(rows), d_in + 1, d_in)}; {fix}")
    maps = maps.float()
    if not torch.isfinite(maps).all():
        raise SAEFileError(f"{label}: {HANDOVERS} holds NaN or inf; {fix}")
    for (name, anchor), m in zip(rows, maps):
        index.concepts[name].handover, index.concepts[name].handover_anchor = m, anchor


def _show(value, limit: int = 60) -> str:
    """A value from a file, short enough to quote in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole(value, what: str, label: str) -> int:
    """A count or index from metadata: a JSON whole number (never a bool, text or fraction)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise SAEFileError(f"{label}: {what} is {_show(value)}, not a whole number; the file is damaged. "
                           "Re-create or re-download it.")
    return int(value)


def _json_object(text, what: str) -> dict:
    """Parse a JSON object from a file, turning every way it can fail into an SAEFileError
    (json raises RecursionError, not JSONDecodeError, on very deeply nested input)."""
    if not isinstance(text, (str, bytes)):
        raise SAEFileError(f"{what} is missing or not text; the file is damaged. Re-create or re-download it.")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # the position only: the decoder's message could quote bytes of the file
        where = f"line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else f"byte {e.start}"
        raise SAEFileError(f"{what} is not valid JSON (UTF-8, at {where}); the file is damaged. "
                           "Re-create or re-download it.") from None
    except RecursionError:
        raise SAEFileError(f"{what} is JSON nested too deeply to read; the file is damaged or hostile. "
                           "Re-create or re-download it.") from None
    if not isinstance(value, dict):
        raise SAEFileError(f"{what} is a JSON {type(value).__name__}, not an object; the file is damaged. "
                           "Re-create or re-download it.")
    return value


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise SAEFileError(f"{name}: the safetensors header is corrupt. Re-download or re-create it.") from None
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise TypeError("__metadata__ is not an object")
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
        raise SAEFileError(f"{label}: k={k} is not between 1 and the number of latents ({n_lat}); the file is "
                           "damaged. Re-create or re-download it.")
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
        with open(cfg_path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise SAEFileError(f"{label}/cfg.json could not be read ({e.strerror}).") from None
    cfg = _json_object(text, f"{label}/cfg.json")
    read_safetensors_metadata(w_path)
    k = _whole(cfg.get("k"), "k in cfg.json", label)
    d_in = _whole(cfg["d_in"], "d_in in cfg.json", label) if "d_in" in cfg else None
    tensors = _load_tensors(w_path)
    names = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
    sae = _build(tensors, names, k, label, device)
    if d_in is not None and d_in != sae.d_in:
        raise SAEFileError(f"{label}/cfg.json says d_in={d_in} but the weights have {sae.d_in}.")
    given = hook_point or cfg.get("hookpoint")
    if given is not None and not isinstance(given, str):
        raise SAEFileError(f"{label}/cfg.json: hookpoint is {_show(given)}, not a block name.")
    if not given and not _is_block_name(label):
        # sparsify stores the block only in the folder's name: a renamed folder has lost it
        raise SAEFileError(f"The SAeUron/sparsify SAE folder '{label}' does not say which UNet block it was trained "
                           "on: such folders are named after their hook point. Rename the folder back to its block "
                           "name (e.g. unet.up_blocks.1.attentions.1 for objects, unet.up_blocks.1.attentions.2 for "
                           "styles), or add \"hookpoint\": \"unet.up_blocks.1.attentions.1\" to its cfg.json.")
    hook = diffusers_to_ldm(given or label)
    family = cfg.get("model_family", "unknown")
    family = family if isinstance(family, str) else "unknown"
    return LoadedSAE(sae, SAEInfo(hook, family, ConceptIndex(), {"imported_from": "sparsify", "cfg": cfg}, folder))
