"""The SAE socket type shared by the nodes (carries a saemnesia_core.LoadedSAE), and the
schema helper every node uses."""
import dataclasses

from comfy_api.latest import io

SAE = io.Custom("SAE")
CATEGORY = "SAEmnesia"
PREFIX = "SAEmnesia"

# Words an artist types in the node search. ComfyUI reads them from io.Schema.search_aliases,
# a field newer than 0.3.75 (whose frontend 1.32.9 searches names only): passed where it exists.
ALIASES = ["remove concept", "erase concept", "unlearn", "forget", "concept erasure", "sparse autoencoder", "sae"]
HAS_SEARCH_ALIASES = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}


def schema(*, search_aliases: list[str], **kw) -> io.Schema:
    if HAS_SEARCH_ALIASES:
        kw["search_aliases"] = search_aliases
    return io.Schema(**kw)
