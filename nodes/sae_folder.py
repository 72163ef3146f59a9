"""The `sae` model folder: registration, safe name resolution, and a load cache."""
from __future__ import annotations

import os
import re

import folder_paths

from saemnesia_core import LoadedSAE, SAEError, load_sae
from saemnesia_core.cache import SAECache, plan_bytes, sae_fingerprint
from saemnesia_core.checkpoint import SAEPlan, plan_sae
from saemnesia_core.errors import quoted

FOLDER = "sae"
EXTENSIONS = {".safetensors"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,120}$")
# names Windows keeps for devices, with any extension and in any case ('nul.safetensors' is the
# null device there): workflows are shared across systems, so they are refused everywhere
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})
# SAEs shipped with the pack (repo root / models / sae), read-only for the nodes
PACK_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", FOLDER)


def register():
    """Add models/sae, keeping any paths extra_model_paths.yaml already gave it, and then the
    pack's own models/sae (the SAEs shipped for the MiniCanvas demo model). The pack's folder
    comes last, so a user's file of the same name wins and new SAEs are saved in the user's."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[FOLDER]
        paths = list(paths)
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(exts) | EXTENSIONS)
    else:
        paths = [default]
        folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))
    if PACK_FOLDER in paths:
        paths.remove(PACK_FOLDER)
    paths.append(PACK_FOLDER)  # listed even while it does not exist yet; never created here
    os.makedirs(default, exist_ok=True)


def folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER)


def list_saes() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def _inside(path: str, roots: list[str]) -> bool:
    """Lexically inside one of the folders. Symlinked files are fine (users share model
    folders that way); what is refused is a *name* that climbs out."""
    p = os.path.abspath(path)
    return any(os.path.commonpath([p, os.path.abspath(r)]) == os.path.abspath(r) for r in roots)


def folder_label(folder: str) -> str:
    """How messages name an sae folder: relative to ComfyUI's models folder, never a server path."""
    if os.path.abspath(folder) == os.path.abspath(PACK_FOLDER):
        return "the pack's own models/sae"
    rel = os.path.relpath(os.path.abspath(folder), os.path.abspath(folder_paths.models_dir))
    return f"models/{rel}" if not rel.startswith("..") else "an sae folder from extra_model_paths.yaml"


def resolve(name: str) -> str:
    """Full path of an SAE that Load SAE lists; anything else is refused, so no name reaches a
    file outside the sae folders (or one that is not an SAE)."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in re.split(r"[\\/]", name):
        raise SAEError(f"{quoted(name)} is not a file name inside the sae folder. Pick an SAE from the list.")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not _inside(path, folders()) or name not in list_saes():
        raise SAEError(f"SAE {quoted(name)} was not found in the sae folder (models/sae, folders set in "
                       "extra_model_paths.yaml, or the pack's own models/sae). Put the file there and refresh "
                       "(press R in the UI).")
    return path


# what was read from SAE files, by content (saemnesia_core.cache.sae_fingerprint): the SAEs
# loaded (bounded: 4 SAEs or MAX_SAE_BYTES of weights, whichever comes first), and the plans the
# concept picker reads (header and concept index only, never the weights)
_cache = SAECache()
_plans = SAECache(max_entries=32, max_bytes=64 << 20, size_of=plan_bytes)


def fingerprint(name: str) -> str:
    """What Load SAE's fingerprint_inputs returns: the content of the file (a replaced file runs
    the graph again, a touched one does not); the name alone when it cannot be read (the node then
    runs and says why)."""
    try:
        return f"{name}:{sae_fingerprint(resolve(name))}"
    except (SAEError, OSError):
        return str(name)


def _read(name: str, cache: SAECache, read):
    path = resolve(name)
    try:
        stamp = sae_fingerprint(path)
    except OSError as e:
        raise SAEError(f"SAE {quoted(name)} could not be read ({e.strerror}). Check the file and refresh.") from None
    hit = cache.get(path, stamp)
    if hit is not None:
        return hit
    try:
        value = read(path)
    except SAEError as e:
        cache.put_failure(path, stamp, e)
        raise
    cache.put(path, stamp, value)
    return value


def load(name: str) -> LoadedSAE:
    """The SAE Load SAE gives, read again whenever the file's content changes."""
    return _read(name, _cache, load_sae)


def plan(name: str) -> SAEPlan:
    """What the concept picker shows of an SAE: its header and concept index, checked as loading
    checks them, without reading its weights."""
    return _read(name, _plans, plan_sae)


def output_path(name: str, overwrite: bool) -> str:
    """Where a new SAE named `name` is saved: the first sae folder, or with overwrite on, the folder
    that holds the SAE Load SAE lists under that name (so no copy is left shadowed by another).
    Never a silent overwrite, and never a name Windows keeps for a device."""
    stem = name.strip() if isinstance(name, str) else ""
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if not _NAME.match(stem) or ".." in stem:
        raise SAEError(f"{quoted(name)} is not a valid SAE name: use letters, digits, spaces, '_', '-' or '.', "
                       "with no folder separators (the file is saved in the sae folder).")
    device = stem.split(".", 1)[0].rstrip(" ").upper()
    if device in WINDOWS_DEVICES:
        raise SAEError(f"{quoted(name)} is not a valid SAE name: {device} is a device name on Windows (as are CON, "
                       "PRN, AUX, NUL, COM1-COM9 and LPT1-LPT9, with any extension), and workflows travel between "
                       "systems. Choose another name.")
    file = stem + ".safetensors"
    path = os.path.join(folders()[0], file)
    if not _inside(path, folders()):
        raise SAEError(f"{quoted(name)} would be saved outside the sae folder; choose a plain name.")
    for folder in folders():
        existing = os.path.join(folder, file)
        if not os.path.exists(existing):
            continue
        if os.path.abspath(folder) == os.path.abspath(PACK_FOLDER):
            # the demo workflows load these by name: a user file of that name would take their place
            raise SAEError(f"'{file}' is an SAE shipped with the pack (in {folder_label(folder)}), which the example "
                           "workflows load by name. Choose another name.")
        if not overwrite:
            raise SAEError(f"An SAE named '{file}' already exists in {folder_label(folder)}. Choose another "
                           "name, or turn on 'overwrite' to replace it.")
        return existing  # the first folder holding it is the one Load SAE reads it from
    return path


def forget(path: str):
    _cache.pop(path, None)
    _plans.pop(path, None)
