"""The SAE socket type shared by the nodes: carries a saemnesia_core.LoadedSAE."""
from comfy_api.latest import io

SAE = io.Custom("SAE")
CATEGORY = "SAEmnesia"
PREFIX = "SAEmnesia"
