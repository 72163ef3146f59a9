"""The MiniCanvas demo model's node, kept apart from the four SAE nodes: this folder is the only
ComfyUI code that imports `saemnesia_demo`, and the pack registers it as a list of its own."""
import logging

from .demo_model import LoadDemoModel

DEMO_NODES = [LoadDemoModel]


def warn_if_text_encoder_missing():
    """Said once at start, not only when a demo workflow fails."""
    from saemnesia_demo import text_encoder
    if not text_encoder.available():
        logging.getLogger("saemnesia").warning("SAEmnesia: %s", text_encoder.missing_message())
