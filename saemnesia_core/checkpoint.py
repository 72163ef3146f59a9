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
import math
import os
import re
import struct
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open

from .concepts import ConceptIndex
from .errors import SAEError, SAEFileError, quoted
from .fileio import save_safetensors_atomic
from .sae import TopKSAE

FORMAT = "saemnesia-sae"
FORMAT_VERSION = 2  # 1: one SAE; 2: a set of SAEs, one per hook point (written only for sets)
# Limits on what is read from a file, checked before it is read: the header (JSON metadata: the
# concept index) up to safetensors' own limit, and the tensors an SAE needs as float32 in memory,
# which is also the SAE cache's bound, so that any SAE the pack loads fits in it
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_SAE_BYTES = 1 << 30
WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})  # safetensors' names
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


# --- reading: the header first, then only the tensors it declares and the SAE needs ------------------
@dataclass
class MemberPlan:
    """One SAE of a file as its header and metadata declare it, checked before any weight is read."""

    label: str  # how messages name it: the file (and block) by name, never a server path
    hook_point: str
    k: int
    n_latents: int
    d_in: int
    index: ConceptIndex
    tensors: dict[str, str]  # role (W_enc, b_enc, W_dec, b_dec, STATES, HANDOVERS) -> tensor name in the file
    reserved: list[int] = field(default_factory=list)
    state_names: list[str] = field(default_factory=list)  # the concepts of the concept_states rows
    handover_pairs: list[list[str]] = field(default_factory=list)  # [concept, anchor] of the handover rows


@dataclass
class SAEPlan:
    """What an SAE file holds, read from its header and metadata only: its blocks, sizes and concept
    index (all the concept picker needs), with every declared tensor checked: present, floating
    point, of fitting shapes, and within MAX_SAE_BYTES once in memory."""

    path: str  # the file (or sparsify folder) to read the tensors from
    weights: str  # the .safetensors file that holds them
    family: str
    training: dict
    members: list[MemberPlan]

    @property
    def index(self) -> ConceptIndex:
        return self.members[0].index

    @property
    def hook_points(self) -> list[str]:
        return [m.hook_point for m in self.members]


def load_sae(path: str, device="cpu") -> LoadedSAE:
    """Load either format; every failure is an SAEFileError that says what to do."""
    return load_planned(plan_sae(path), device)


def plan_sae(path: str) -> SAEPlan:
    """Read an SAE's header and metadata (no weights) and check everything they declare."""
    if os.path.isdir(path):
        return plan_sparsify_folder(path)
    if not os.path.isfile(path):
        raise SAEFileError(f"SAE file not found: {os.path.basename(path)}. Put .safetensors SAEs in the 'sae' models folder.")
    label = os.path.basename(path)
    if not path.lower().endswith(".safetensors"):
        raise SAEFileError(f"{label} is not a .safetensors file. SAEmnesia loads only safetensors "
                           "(never pickle: a .pt/.ckpt/.bin can run code). Convert it to safetensors first.")
    meta, declared = read_safetensors_header(path)
    if meta.get("format") != FORMAT and "saemnesia" not in meta:
        # a bare sae.safetensors from sparsify, with its cfg.json beside it
        if os.path.isfile(os.path.join(os.path.dirname(path), "cfg.json")):
            return plan_sparsify_folder(os.path.dirname(path))
        raise SAEFileError(f"{label} is a safetensors file but not an SAEmnesia SAE (no 'saemnesia' "
                           "metadata) and has no cfg.json beside it. Save SAEs with SAEmnesia, or keep a sparsify "
                           "SAE's cfg.json next to its sae.safetensors.")
    record = _json_object(meta.get("saemnesia"), f"{label}: its metadata record")
    version = record.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise SAEFileError(f"{label}: format_version is {quoted(version)}, not a whole number; the file is damaged "
                           "or was not written by SAEmnesia. Re-create or re-download it.")
    if version > FORMAT_VERSION:
        raise SAEFileError(f"{label} has SAE format version {version}; this SAEmnesia reads up to "
                           f"{FORMAT_VERSION}. Update the SAEmnesia node pack.")
    family, training = record.get("model_family", "unknown"), record.get("training", {})
    if not isinstance(family, str) or not isinstance(training, dict):
        raise SAEFileError(f"{label}: model_family must be text and training a JSON object; the file is damaged. "
                           "Re-create it.")
    if version < 2:
        parts = [(record, "", label)]
    else:
        blocks = record.get("blocks")
        if not isinstance(blocks, list) or not blocks or not all(isinstance(p, dict) for p in blocks):
            raise SAEFileError(f"{label}: an SAE set file must list its blocks as JSON objects; the file is damaged. "
                               "Re-create it.")
        parts = [(part, f"blocks.{i}.", f"{label} block {i}") for i, part in enumerate(blocks)]
    members = [_plan_member(part, prefix, where, declared) for part, prefix, where in parts]
    hooks = [m.hook_point for m in members]
    if len(set(hooks)) != len(hooks):
        raise SAEFileError(f"{label}: its SAE set names a block twice ({quoted(hooks)}); the file is damaged. Re-create it.")
    return _checked_plan(SAEPlan(path, path, family, training, members), declared, label)


def _plan_member(record: dict, prefix: str, label: str, declared: dict) -> MemberPlan:
    """One SAE of a file: its part of the metadata record and its tensors (under `prefix`)."""
    sizes = _check_sizes(record, label)
    names = {n: prefix + n for n in WEIGHTS}
    n_lat, d_in = _declared_sae(declared, names, sizes["k"], label)
    weights = {"n_latents": n_lat, "d_in": d_in}
    for key, value in sizes.items():
        if key != "k" and value != weights[key]:
            raise SAEFileError(f"{label}: metadata says {key}={value} but the weights have {weights[key]}; the file is "
                               "inconsistent. Re-create it.")
    reserved = record.get("reserved_latents", [])
    if not isinstance(reserved, list):
        raise SAEFileError(f"{label}: reserved_latents is {quoted(reserved)}, not a list of latent indices; "
                           "the file is damaged. Re-create it.")
    reserved = [_whole(i, "a reserved latent", label) for i in reserved]
    try:
        index = ConceptIndex.from_json(record.get("concept_index", {}))
        index.validate(n_lat)
    except SAEError as e:
        raise SAEFileError(f"{label}: bad concept index: {e}") from None
    except Exception as e:  # noqa: BLE001 - any other malformed index is a file problem too
        raise SAEFileError(f"{label}: bad concept index ({type(e).__name__}); re-create the SAE file.") from None
    hook = record.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFileError(f"{label} does not say which block it was trained on (no hook_point).")
    plan = MemberPlan(label, hook, sizes["k"], n_lat, d_in, index, names, reserved)
    _plan_states(plan, declared, record, prefix)
    _plan_handovers(plan, declared, record, prefix)
    return plan


def _check_sizes(record: dict, label: str) -> dict:
    """k and sizes of one SAE's record ({"k", and "d_in"/"n_latents" where given}), checked
    before any weight is read: a bad k would otherwise surface only when sampling."""
    sizes = {"k": _whole(record.get("k"), "k", label)}
    sizes.update({key: _whole(record[key], key, label) for key in ("d_in", "n_latents") if key in record})
    if sizes.get("n_latents") is not None and not 0 < sizes["k"] <= sizes["n_latents"]:
        raise SAEFileError(f"{label}: k={sizes['k']} is not between 1 and the number of latents "
                           f"({sizes['n_latents']}); the file is damaged. Re-create it.")
    return sizes


def _declared_sae(declared: dict, names: dict, k: int, label: str) -> tuple[int, int]:
    """(n_latents, d_in) of the four SAE tensors the header declares (present, floating point,
    shapes of one SAE, k within the latents)."""
    missing = [n for n in names.values() if n not in declared]
    if missing:
        raise SAEFileError(f"{label} lacks tensors {missing}; it is not a TopK SAE this pack can use.")
    for name in names.values():
        _check_float(declared[name][0], name, label)
    W_enc, b_enc, W_dec, b_dec = (tuple(declared[names[n]][1]) for n in WEIGHTS)
    n_lat, d_in = W_dec if len(W_dec) == 2 else (0, 0)
    if len(W_dec) != 2 or W_enc != (n_lat, d_in) or b_enc != (n_lat,) or b_dec != (d_in,):
        raise SAEFileError(f"{label}: tensor shapes do not fit one SAE (W_enc {W_enc}, b_enc {b_enc}, W_dec {W_dec}, "
                           f"b_dec {b_dec}).")
    if not (0 < k <= n_lat):
        raise SAEFileError(f"{label}: k={k} is not between 1 and the number of latents ({n_lat}); the file is "
                           "damaged. Re-create or re-download it.")
    return n_lat, d_in


def _check_float(dtype: str, name: str, label: str):
    if dtype not in FLOAT_DTYPES:
        raise SAEFileError(f"{label}: tensor {name} is stored as {dtype}, not floating point. SAE weights must be "
                           f"floats ({', '.join(sorted(FLOAT_DTYPES))}): integer or boolean weights are quantised or "
                           "masks, and used as floats they would change every picture. Re-export the SAE in float32, "
                           "float16 or bfloat16.")


def _plan_states(plan: MemberPlan, declared: dict, record: dict, prefix: str):
    """Each concept's mean SAE input, if the file has them (files from before simply have none)."""
    names = record.get("concept_states")
    if names is None:
        return
    fix = "the file is damaged. Re-create it."
    index, label = plan.index, plan.label
    if not isinstance(names, list) or not all(isinstance(n, str) and n in index.concepts for n in names) \
            or len(set(names)) != len(names):
        raise SAEFileError(f"{label}: concept_states must list concepts of its index, each once; {fix}")
    expected = (len(names), max(1, len(index.timesteps)), plan.d_in)
    _plan_extra(plan, declared, prefix + STATES, STATES, expected, fix)
    plan.state_names = names


def _plan_handovers(plan: MemberPlan, declared: dict, record: dict, prefix: str):
    """Each concept's handover map to its anchor, if the file has them (older files have none)."""
    rows = record.get(HANDOVERS)
    if rows is None:
        return
    fix = "the file is damaged. Re-create it."
    concepts = plan.index.concepts
    ok = isinstance(rows, list) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(n, str) and n in concepts for n in r)
        and r[0] != r[1] for r in rows)
    if not ok or len({r[0] for r in rows}) != len(rows):
        raise SAEFileError(f"{plan.label}: {HANDOVERS} must list [concept, anchor] pairs of its index, each concept "
                           f"once; {fix}")
    _plan_extra(plan, declared, prefix + HANDOVERS, HANDOVERS, (len(rows), plan.d_in + 1, plan.d_in), fix)
    plan.handover_pairs = rows


def _plan_extra(plan: MemberPlan, declared: dict, name: str, role: str, expected: tuple, fix: str):
    entry = declared.get(name)
    shape = None if entry is None else tuple(entry[1])
    if shape != expected:
        raise SAEFileError(f"{plan.label}: the {role} tensor is {shape}, expected {expected}; {fix}")
    _check_float(entry[0], name, plan.label)
    plan.tensors[role] = name


def _checked_plan(plan: SAEPlan, declared: dict, label: str) -> SAEPlan:
    """The plan, if the tensors it will read fit in MAX_SAE_BYTES once converted to float32:
    judged from the sizes the header declares, before anything is read (a sparse file declares
    gigabytes in a few kilobytes of disk)."""
    names = {name for m in plan.members for name in m.tensors.values()}
    need = sum(math.prod(declared[name][1]) * 4 for name in names)
    if need > MAX_SAE_BYTES:
        raise SAEFileError(f"{label} declares tensors that take {need / 2 ** 30:.1f} GiB in memory (as float32); "
                           f"SAEmnesia loads SAEs of up to {MAX_SAE_BYTES / 2 ** 30:.0f} GiB (an SD 1.5 SAeUron SAE "
                           "takes 0.2 GiB). The file is damaged, or not an SAE this pack can use.")
    return plan


def load_planned(plan: SAEPlan, device="cpu") -> LoadedSAE:
    """The SAE a checked plan describes: only the tensors it names are read."""
    tensors = _load_tensors(plan.weights, {name for m in plan.members for name in m.tensors.values()})
    members = [_member(tensors, m, plan, device) for m in plan.members]
    return LoadedSAE(members[0].sae, members[0].info, members if len(members) > 1 else [])


def _member(tensors: dict, plan: MemberPlan, file: SAEPlan, device) -> LoadedSAE:
    W_enc, b_enc, W_dec, b_dec = (tensors[plan.tensors[n]].float() for n in WEIGHTS)
    for n, t in zip(WEIGHTS, (W_enc, b_enc, W_dec, b_dec)):
        if not torch.isfinite(t).all():
            raise SAEFileError(f"{plan.label}: tensor {n} contains NaN or infinite values; the SAE is broken "
                               "(training diverged?). Re-train or re-download it.")
    sae = TopKSAE.from_tensors(W_enc.to(device), b_enc.to(device), W_dec.to(device), b_dec.to(device), plan.k)
    try:
        sae.set_reserved(plan.reserved)
    except ValueError as e:
        raise SAEFileError(f"{plan.label}: bad reserved_latents ({quoted(str(e), 200)}); the file is damaged. "
                           "Re-create it.") from None
    index = plan.index
    for role, rows in ((STATES, plan.state_names), (HANDOVERS, plan.handover_pairs)):
        if role not in plan.tensors:
            continue
        values = tensors[plan.tensors[role]].float()
        if not torch.isfinite(values).all():
            raise SAEFileError(f"{plan.label}: {role} holds NaN or inf; the file is damaged. Re-create it.")
        for row, value in zip(rows, values):
            if role == STATES:
                index.concepts[row].state = value
            else:
                index.concepts[row[0]].handover, index.concepts[row[0]].handover_anchor = value, row[1]
    info = SAEInfo(plan.hook_point, file.family, index, file.training, file.path)
    return LoadedSAE(sae, info)


def _whole(value, what: str, label: str) -> int:
    """A count or index from metadata: a JSON whole number (never a bool, text or fraction)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise SAEFileError(f"{label}: {what} is {quoted(value)}, not a whole number; the file is damaged. "
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
    """The metadata of a safetensors file (see read_safetensors_header)."""
    return read_safetensors_header(path)[0]


def read_safetensors_header(path: str) -> tuple[dict, dict[str, tuple[str, list[int]]]]:
    """(metadata, {tensor name: (dtype, shape)}) from the header alone, refusing pickles, truncated
    files and headers larger than MAX_HEADER_BYTES with a clear message."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SAEFileError(f"{name} is empty or truncated ({size} bytes). Re-download or re-create it.")
        n = struct.unpack("<Q", head)[0]
        first = f.read(1)
        if first == b"{" and MAX_HEADER_BYTES < n and 8 + n <= size:
            raise SAEFileError(f"{name}: its safetensors header (the metadata) is {n / 2 ** 20:.0f} MiB; SAEmnesia reads "
                               f"headers of up to {MAX_HEADER_BYTES // 2 ** 20} MiB. The file is damaged or not an SAE.")
        if first != b"{" or n > MAX_HEADER_BYTES or 8 + n > size:
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
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise TypeError("__metadata__ is not an object")
        declared = {key: _declared(v) for key, v in header.items()}
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        raise SAEFileError(f"{name}: the safetensors header is corrupt. Re-download or re-create it.") from None
    if 8 + n + end > size:
        raise SAEFileError(f"{name} is truncated: its tensors need {8 + n + end} bytes, the file has {size}. "
                           "Re-download or re-create it.")
    return meta, declared


def _declared(entry: dict) -> tuple[str, list[int]]:
    dtype, shape = entry["dtype"], entry["shape"]
    if not isinstance(dtype, str) or not isinstance(shape, list) or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError("a tensor entry without a dtype or shape")
    return dtype, shape


def _load_tensors(path: str, names: set[str]) -> dict[str, torch.Tensor]:
    """Only the named tensors of the file (others it may hold are never read)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as e:
        raise SAEFileError(f"{os.path.basename(path)} could not be read as safetensors ({quoted(str(e), 200)}). "
                           "Re-download or re-create it.") from None


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
    return load_planned(plan_sparsify_folder(folder, hook_point), device)


def plan_sparsify_folder(folder: str, hook_point: str | None = None) -> SAEPlan:
    cfg_path = os.path.join(folder, "cfg.json")
    w_path = os.path.join(folder, "sae.safetensors")
    label = os.path.basename(os.path.normpath(folder))  # messages name the folder, never a server path
    if not (os.path.isfile(cfg_path) and os.path.isfile(w_path)):
        raise SAEFileError(f"{label} is not a sparsify/SAeUron SAE folder: it needs cfg.json and sae.safetensors.")
    try:
        with open(cfg_path, "rb") as f:
            text = f.read(MAX_HEADER_BYTES + 1)
    except OSError as e:
        raise SAEFileError(f"{label}/cfg.json could not be read ({e.strerror}).") from None
    if len(text) > MAX_HEADER_BYTES:
        raise SAEFileError(f"{label}/cfg.json is larger than {MAX_HEADER_BYTES // 2 ** 20} MiB; a sparsify cfg.json is a "
                           "few lines. The folder is damaged: re-download it.")
    cfg = _json_object(text, f"{label}/cfg.json")
    _, declared = read_safetensors_header(w_path)
    k = _whole(cfg.get("k"), "k in cfg.json", label)
    d_in = _whole(cfg["d_in"], "d_in in cfg.json", label) if "d_in" in cfg else None
    names = dict(zip(WEIGHTS, ("encoder.weight", "encoder.bias", "W_dec", "b_dec")))
    n_lat, width = _declared_sae(declared, names, k, label)
    if d_in is not None and d_in != width:
        raise SAEFileError(f"{label}/cfg.json says d_in={d_in} but the weights have {width}.")
    given = hook_point or cfg.get("hookpoint")
    if given is not None and not isinstance(given, str):
        raise SAEFileError(f"{label}/cfg.json: hookpoint is {quoted(given)}, not a block name.")
    if not given and not _is_block_name(label):
        # sparsify stores the block only in the folder's name: a renamed folder has lost it
        raise SAEFileError(f"The SAeUron/sparsify SAE folder {quoted(label)} does not say which UNet block it was "
                           "trained on: such folders are named after their hook point. Rename the folder back to its "
                           "block name (e.g. unet.up_blocks.1.attentions.1 for objects, unet.up_blocks.1.attentions.2 "
                           "for styles), or add \"hookpoint\": \"unet.up_blocks.1.attentions.1\" to its cfg.json.")
    hook = diffusers_to_ldm(given or label)
    family = cfg.get("model_family", "unknown")
    family = family if isinstance(family, str) else "unknown"
    member = MemberPlan(label, hook, k, n_lat, width, ConceptIndex(), names)
    plan = SAEPlan(folder, w_path, family, {"imported_from": "sparsify", "cfg": cfg}, [member])
    return _checked_plan(plan, declared, label)
