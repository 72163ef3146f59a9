"""HTTP routes for the frontend: the concepts of an SAE file, or of a Train node's text boxes
(parsed here, by the same grammar training uses, so the browser holds no copy of it)."""
import asyncio
import logging

from aiohttp import web

from saemnesia_core import SAEError
from saemnesia_core.prompts import LIST_SEPARATORS, planned_concepts

from . import sae_folder

log = logging.getLogger("saemnesia")


def concepts_payload(name: str) -> dict:
    loaded = sae_folder.load(name)
    idx = loaded.index
    return {"sae": name, "hook_point": loaded.info.hook_point, "hook_points": loaded.hook_points, "model_family": loaded.info.model_family,
            "n_latents": loaded.sae.n_latents, "default_mode": idx.default_mode,
            "concepts": [{"name": c.name, "kind": c.kind, "latent": c.latent} for c in idx.concepts.values()],
            "list_separators": LIST_SEPARATORS}


TRAIN_BOXES = ("objects", "styles", "templates", "labelled_prompts")


def planned_payload(boxes: dict) -> dict:
    """The concepts a Train node's boxes name, before its SAE file exists."""
    texts = [boxes.get(k) for k in TRAIN_BOXES]
    if not all(t is None or isinstance(t, str) for t in texts):
        raise SAEError(f"{', '.join(TRAIN_BOXES)} must be text.")
    return {"planned": True, "list_separators": LIST_SEPARATORS,
            "concepts": [{"name": n, "kind": k, "latent": None} for n, k in planned_concepts(*texts)]}


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


async def post_concepts(request):
    try:
        boxes = await request.json()
        if not isinstance(boxes, dict):
            raise SAEError("Send the Train node's boxes as a JSON object.")
        return web.json_response(planned_payload(boxes))
    except (SAEError, ValueError) as e:  # ValueError: a body that is not JSON
        return web.json_response({"error": str(e)}, status=400)


async def get_saes(request):
    return web.json_response({"saes": sae_folder.list_saes()})


def register():
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception:  # noqa: BLE001 - imported outside a running server
        return
    routes.get("/saemnesia/concepts")(get_concepts)
    routes.post("/saemnesia/concepts")(post_concepts)
    routes.get("/saemnesia/saes")(get_saes)
