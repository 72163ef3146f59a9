"""HTTP routes for the frontend: the concepts of an SAE file, or of a Train node's text boxes
(parsed here, by the same grammar training uses, so the browser holds no copy of it).

Every route answers JSON, whatever it is sent: 400 with {"error": ...} for bad input, 413 for a
body over MAX_BODY_BYTES, and a JSON 500 (logged) only for a bug of ours. Reading files and
parsing bodies run in worker threads, so the server's event loop keeps answering."""
import asyncio
import functools
import json
import logging

from aiohttp import web

from saemnesia_core import SAEError
from saemnesia_core.errors import quoted
from saemnesia_core.prompts import LIST_SEPARATORS, MAX_TRAIN_BOX_CHARS, TRAIN_BOXES, planned_concepts

from . import sae_folder

log = logging.getLogger("saemnesia")

# The largest request body read: the Train node's four boxes at their limit, even with every
# character written as a \uXXXX escape (6 bytes). Larger bodies are refused before they are read.
MAX_BODY_BYTES = len(TRAIN_BOXES) * MAX_TRAIN_BOX_CHARS * 6 + 4096


class BodyTooLarge(SAEError):
    pass


def json_route(handler):
    """A route that answers JSON for every request (see the module docstring)."""
    @functools.wraps(handler)
    async def route(request):
        try:
            return web.json_response(await handler(request))
        except BodyTooLarge as e:
            return web.json_response({"error": str(e)}, status=413)
        except SAEError as e:
            return web.json_response({"error": str(e)}, status=400)
        except Exception as e:  # noqa: BLE001 - a bug of ours: still a JSON answer the picker can show
            log.exception("SAEmnesia: %s %s failed", request.method, request.path)
            return web.json_response({"error": f"SAEmnesia could not answer ({type(e).__name__}); see the server log."},
                                     status=500)
    return route


def concepts_payload(name: str) -> dict:
    """What the picker shows of an SAE: read from its header and concept index, never its weights."""
    plan = sae_folder.plan(name)
    first, idx = plan.members[0], plan.index
    return {"sae": name, "hook_point": first.hook_point, "hook_points": plan.hook_points, "model_family": plan.family,
            "n_latents": first.n_latents, "default_mode": idx.default_mode,
            "concepts": [{"name": c.name, "kind": c.kind, "latent": c.latent} for c in idx.concepts.values()],
            "list_separators": LIST_SEPARATORS}


def planned_payload(boxes: dict) -> dict:
    """The concepts a Train node's boxes name, before its SAE file exists."""
    texts = [boxes.get(k) for k in TRAIN_BOXES]
    if not all(t is None or isinstance(t, str) for t in texts):
        raise SAEError(f"{', '.join(TRAIN_BOXES)} must be text.")
    return {"planned": True, "list_separators": LIST_SEPARATORS,
            "concepts": [{"name": n, "kind": k, "latent": None} for n, k in planned_concepts(*texts)]}


def planned_from_body(body: bytes) -> dict:
    try:
        boxes = json.loads(body)
    except RecursionError:
        raise SAEError("The request body is JSON nested too deeply to read; send the Train node's boxes as one "
                       "JSON object of texts.") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise SAEError(f"The request body is not JSON ({quoted(str(e))}); send the Train node's boxes as a JSON "
                       "object.") from None
    if not isinstance(boxes, dict):
        raise SAEError("Send the Train node's boxes as a JSON object.")
    return planned_payload(boxes)


async def read_body(request) -> bytes:
    """The request body, at most MAX_BODY_BYTES: a longer one is refused by its declared length
    before anything is read, or as soon as the bytes read pass the limit."""
    too_large = BodyTooLarge(f"The request body is larger than {MAX_BODY_BYTES:,} bytes, the most this route reads "
                             f"(the Train node's four boxes hold at most {MAX_TRAIN_BOX_CHARS:,} characters each).")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(1 << 16):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


@json_route
async def get_concepts(request):
    # reading an SAE's header takes a moment for a large concept index: off the event loop
    return await asyncio.to_thread(concepts_payload, request.query.get("sae", ""))


@json_route
async def post_concepts(request):
    return await asyncio.to_thread(planned_from_body, await read_body(request))


@json_route
async def get_saes(request):
    return {"saes": sae_folder.list_saes()}


def register():
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except Exception:  # noqa: BLE001 - imported outside a running server
        return
    routes.get("/saemnesia/concepts")(get_concepts)
    routes.post("/saemnesia/concepts")(post_concepts)
    routes.get("/saemnesia/saes")(get_saes)
