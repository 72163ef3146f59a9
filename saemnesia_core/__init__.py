"""SAEmnesia core: TopK SAEs, concept indices and erasure, in pure torch (no ComfyUI)."""
from .checkpoint import LoadedSAE, SAEInfo, load_sae, save_sae
from .concepts import ConceptIndex
from .errors import IncompatibleSAEError, SAEError, SAEFileError, TrainingCancelled, UnknownConceptError
from .intervention import ConceptEraser
from .prompts import split_list
from .sae import TopKSAE

__all__ = ["ConceptEraser", "ConceptIndex", "IncompatibleSAEError", "LoadedSAE", "SAEError", "SAEFileError",
           "SAEInfo", "TopKSAE", "TrainingCancelled", "UnknownConceptError", "load_sae", "save_sae", "split_list"]
