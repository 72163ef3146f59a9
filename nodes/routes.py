"""HTTP routes for the frontend: the concept index of an SAE file."""
import logging

from aiohttp import web

from saemnesia_core import SAEError

from . import sae_folder

log = logging.getLogger("saemnesia")


def concepts_payload(name: str) -> dict:
    loaded = sae_folder.load(name)
    idx = loaded.index
    return {"sae": name, "hook_point": loaded.info.hook_point, "model_family": loaded.info.model_family,
            "n_latents": loaded.sae.n_latents, "default_mode": idx.default_mode,
            "concepts": [{"name": c.name, "kind": c.kind, "latent": c.latent} for c in idx.concepts.values()]}


def register():
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception:  # noqa: BLE001 - imported outside a running server
        return

    @routes.get("/saemnesia/concepts")
    async def get_concepts(request):
        name = request.query.get("sae", "")
        try:
            return web.json_response(concepts_payload(name))
        except SAEError as e:
            return web.json_response({"error": str(e)}, status=400)

    @routes.get("/saemnesia/saes")
    async def get_saes(request):
        return web.json_response({"saes": sae_folder.list_saes()})
