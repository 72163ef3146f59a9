"""The `sae` model folder: registration, safe name resolution, and a load cache."""
from __future__ import annotations

import os
import re

import folder_paths

from saemnesia_core import LoadedSAE, SAEError, load_sae
from saemnesia_core.cache import SAECache, file_stamp

FOLDER = "sae"
EXTENSIONS = {".safetensors"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,120}$")
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
    if not name or os.path.isabs(name) or ".." in re.split(r"[\\/]", name):
        raise SAEError(f"'{name}' is not a file name inside the sae folder. Pick an SAE from the list.")
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not _inside(path, folders()) or name not in list_saes():
        raise SAEError(f"SAE '{name}' was not found in the sae folder (models/sae, folders set in "
                       "extra_model_paths.yaml, or the pack's own models/sae). Put the file there and refresh "
                       "(press R in the UI).")
    return path


_cache = SAECache()  # bounded: 4 SAEs or 1 GiB of weights, whichever comes first


def load(name: str) -> LoadedSAE:
    path = resolve(name)
    try:
        stamp = file_stamp(path)
    except OSError as e:
        raise SAEError(f"SAE '{name}' could not be read ({e.strerror}). Check the file and refresh.") from None
    hit = _cache.get(path, stamp)
    if hit is not None:
        return hit
    try:
        loaded = load_sae(path)
    except SAEError as e:
        _cache.put_failure(path, stamp, e)
        raise
    _cache.put(path, stamp, loaded)
    return loaded


def output_path(name: str, overwrite: bool) -> str:
    """Where a new SAE named `name` is saved (the first sae folder). Never a silent overwrite, and
    never a file that would hide an SAE of the same name in another folder Load SAE lists."""
    stem = name.strip()
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if not _NAME.match(stem) or ".." in stem:
        raise SAEError(f"'{name}' is not a valid SAE name: use letters, digits, spaces, '_', '-' or '.', "
                       "with no folder separators (the file is saved in the sae folder).")
    file = stem + ".safetensors"
    path = os.path.join(folders()[0], file)
    if not _inside(path, folders()):
        raise SAEError(f"'{name}' would be saved outside the sae folder; choose a plain name.")
    for folder in folders():
        if not os.path.exists(os.path.join(folder, file)):
            continue
        if os.path.abspath(folder) == os.path.abspath(PACK_FOLDER):
            # the demo workflows load these by name: a user file of that name would take their place
            raise SAEError(f"'{file}' is an SAE shipped with the pack (in {folder_label(folder)}), which the example "
                           "workflows load by name. Choose another name.")
        if not overwrite:
            raise SAEError(f"An SAE named '{file}' already exists in {folder_label(folder)}. Choose another "
                           "name, or turn on 'overwrite' to replace it.")
    return path


def forget(path: str):
    _cache.pop(path, None)
