"""ComfyUI adapters. Thin: each node parses its inputs and calls saemnesia_core."""
from .demo_model import LoadDemoModel
from .erase_concepts import EraseConcepts
from .inspect_neuron import InspectNeuron
from .load_sae import LoadSAE
from .train_sae import TrainSAEFromPrompts

NODES = [LoadSAE, EraseConcepts, InspectNeuron, TrainSAEFromPrompts, LoadDemoModel]
