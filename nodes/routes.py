"""HTTP routes for the frontend: the concept index of an SAE file."""
import asyncio
import logging

from aiohttp import web

from saemnesia_core import SAEError

from . import sae_folder

log = logging.getLogger("saemnesia")


def concepts_payload(name: str) -> dict:
    loaded = sae_folder.load(name)
    idx = loaded.index
    return {"sae": name, "hook_point": loaded.info.hook_point, "hook_points": loaded.hook_points, "model_family": loaded.info.model_family,
            "n_latents": loaded.sae.n_latents, "default_mode": idx.default_mode,
            "concepts": [{"name": c.name, "kind": c.kind, "latent": c.latent} for c in idx.concepts.values()]}


async def get_concepts(request):
    name = request.query.get("sae", "")
    try:
        # reading an SD-sized SAE takes seconds: off the event loop, so the server keeps answering
        return web.json_response(await asyncio.to_thread(concepts_payload, name))
    except SAEError as e:
        return web.json_response({"error": str(e)}, status=400)
    except Exception as e:  # noqa: BLE001 - a bug of ours: still a JSON answer the picker can show
        log.exception("SAEmnesia: listing the concepts of %r failed", name)
        return web.json_response({"error": f"Could not read the concepts of '{name}' ({type(e).__name__}); "
                                           "see the server log."}, status=500)


async def get_saes(request):
    return web.json_response({"saes": sae_folder.list_saes()})


def register():
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception:  # noqa: BLE001 - imported outside a running server
        return
    routes.get("/saemnesia/concepts")(get_concepts)
    routes.get("/saemnesia/saes")(get_saes)
