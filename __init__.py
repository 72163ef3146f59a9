"""SAEmnesia for ComfyUI: erase concepts from diffusion models with sparse autoencoders.

ComfyUI imports this folder as a package. The core library (`saemnesia_core`) and the demo
package (`saemnesia_demo`) are importable on their own, so the pack's folder goes on sys.path first.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)  # appended: ComfyUI's own modules (e.g. its nodes.py) keep precedence

WEB_DIRECTORY = "./web"

try:
    import folder_paths  # noqa: F401  (present only inside ComfyUI)
    _IN_COMFY = True
except ImportError:
    _IN_COMFY = False

if _IN_COMFY:
    from comfy_api.latest import ComfyExtension

    from .nodes import NODES, sae_folder
    from .nodes import routes as _routes
    from .nodes.demo import DEMO_NODES, warn_if_text_encoder_missing

    sae_folder.register()
    _routes.register()
    warn_if_text_encoder_missing()

    class SAEmnesiaExtension(ComfyExtension):
        async def get_node_list(self):
            return [*NODES, *DEMO_NODES]

    async def comfy_entrypoint():
        return SAEmnesiaExtension()
