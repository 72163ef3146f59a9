"""ComfyUI adapters. Thin: each node parses its inputs and calls saemnesia_core.

The four SAE nodes; the demo model's node lives apart in nodes/demo/."""
from .erase_concepts import EraseConcepts
from .inspect_neuron import InspectNeuron
from .load_sae import LoadSAE
from .train_sae import TrainSAEFromPrompts

NODES = [LoadSAE, EraseConcepts, InspectNeuron, TrainSAEFromPrompts]
