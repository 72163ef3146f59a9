"""The SAE cache is bounded and remembers failures per file version; the concepts route loads
off the event loop and answers hostile files with a JSON error (issue 13, items 5 and 6).
Runs in-process against the real ComfyUI modules (folder_paths, the pack's routes)."""
import asyncio
import gc
import os
import threading
import weakref

import pytest
import torch

pytestmark = pytest.mark.comfy


@pytest.fixture()
def sae_dir(pack, tmp_path, monkeypatch):
    from saemnesia_pack.nodes import sae_folder

    import folder_paths

    from saemnesia_core.cache import SAECache
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "sae", ([str(tmp_path / "sae")], {".safetensors"}))
    monkeypatch.setattr(sae_folder, "_cache", SAECache())
    os.makedirs(tmp_path / "sae")
    folder_paths.filename_list_cache.clear()
    yield tmp_path / "sae"
    folder_paths.filename_list_cache.clear()


def save(path, d=32, n=256, hook="output_blocks.4.1"):
    from saemnesia_core import SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    sae = TopKSAE(d, n, 4)
    sae.requires_grad_(False)
    index = ConceptIndex(timesteps=[999.0], concepts={"cat": Concept("cat", "object", None, [Selection([1], [1], [1], [0])])})
    save_sae(str(path), sae, SAEInfo(hook, "sd1", index, {}))
    return path


def test_the_cache_holds_at_most_its_bytes_and_count_and_frees_what_it_evicts(sae_dir, monkeypatch):
    from saemnesia_pack.nodes import sae_folder

    from saemnesia_core.cache import SAECache, sae_bytes
    for i in range(6):
        save(sae_dir / f"s{i}.safetensors")
    one = sae_bytes(sae_folder.load("s0.safetensors"))
    assert one >= 2 * 256 * 32 * 4  # both weight matrices, float32
    cache = SAECache(max_entries=10, max_bytes=int(2.5 * one))
    monkeypatch.setattr(sae_folder, "_cache", cache)
    refs = []
    for i in range(6):
        loaded = sae_folder.load(f"s{i}.safetensors")
        refs.append(weakref.ref(loaded))
        del loaded
        assert cache.nbytes <= cache.max_bytes and len(cache) <= 2
    gc.collect()
    assert [r() is not None for r in refs] == [False] * 4 + [True] * 2  # evicted SAEs are really freed
    assert sae_folder.load("s5.safetensors") is refs[5]()  # the newest are still hits
    # least recently *used* goes first: touching s4 makes s5 the one to go
    sae_folder.load("s4.safetensors")
    sae_folder.load("s0.safetensors")
    assert str(sae_dir / "s4.safetensors") in cache and str(sae_dir / "s5.safetensors") not in cache

    by_count = SAECache(max_entries=3, max_bytes=1 << 40)
    monkeypatch.setattr(sae_folder, "_cache", by_count)
    for i in range(6):
        sae_folder.load(f"s{i}.safetensors")
        assert len(by_count) <= 3
    assert len(by_count) == 3


def test_an_sae_larger_than_the_byte_bound_is_handed_out_but_never_kept(sae_dir, monkeypatch):
    """Issue 27: the newest entry stayed even when it alone was over the bound (a sparse file
    declaring 1 GiB kept 2 GiB cached). Now the bound holds at every moment."""
    from saemnesia_pack.nodes import sae_folder

    from saemnesia_core.cache import SAECache, sae_bytes
    save(sae_dir / "a.safetensors")
    save(sae_dir / "b.safetensors", n=512)
    one = sae_bytes(sae_folder.load("a.safetensors"))
    cache = SAECache(max_bytes=int(1.5 * one))
    monkeypatch.setattr(sae_folder, "_cache", cache)
    a = sae_folder.load("a.safetensors")
    assert sae_folder.load("a.safetensors") is a and len(cache) == 1
    big = sae_folder.load("b.safetensors")  # twice a's size: over the bound alone
    assert big.sae.n_latents == 512 and str(sae_dir / "b.safetensors") not in cache
    assert cache.nbytes <= cache.max_bytes and str(sae_dir / "a.safetensors") in cache  # nothing evicted for it


def test_the_default_cache_is_bounded(pack):
    from saemnesia_pack.nodes import sae_folder
    # three SD-sized SAEs (20480 x 1280, two float32 matrices each: ~210 MB) used to stay forever
    assert sae_folder._cache.max_entries <= 4 and sae_folder._cache.max_bytes <= 1 << 30


def test_a_failure_is_cached_per_file_version_and_a_fixed_file_is_read_again(sae_dir, monkeypatch):
    from saemnesia_pack.nodes import sae_folder

    from saemnesia_core import SAEFileError
    path = sae_dir / "bad.safetensors"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(SAEFileError, match="truncated or not a safetensors"):
        sae_folder.load("bad.safetensors")
    # the same bytes written again (a new mtime): the cached failure answers, the file is not parsed again
    path.write_bytes(b"\x00" * 40)
    real, parsed = sae_folder.load_sae, []
    monkeypatch.setattr(sae_folder, "load_sae", lambda p: parsed.append(p) or real(p))
    with pytest.raises(SAEFileError, match="truncated or not a safetensors"):
        sae_folder.load("bad.safetensors")
    assert parsed == []
    # other bytes, same size and mtime (as cp -p or rsync -a leave a replaced file): read again,
    # so this is a pickle now (issue 27: keyed by mtime and size, the old failure answered)
    st = os.stat(path)
    path.write_bytes(b"PK" + b"\x00" * 38)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(SAEFileError, match="pickle"):
        sae_folder.load("bad.safetensors")
    # fixed: loads
    save(path)
    assert sae_folder.load("bad.safetensors").info.hook_point == "output_blocks.4.1"


def request(query):
    from aiohttp.test_utils import make_mocked_request
    return make_mocked_request("GET", f"/saemnesia/concepts?{query}")


def answer(resp):
    import json
    return resp.status, json.loads(resp.body)


def off_the_loop(monkeypatch, owner, name: str, send):
    """Send a request (send(): a coroutine answering it) while owner.name blocks until a coroutine
    on the event loop releases it, which work done on the loop itself would never see. Returns the
    answer and the thread the work ran in."""
    real, gate, seen = getattr(owner, name), threading.Event(), {}

    def slow(*args):
        seen["thread"] = threading.current_thread()
        if not gate.wait(20):
            raise RuntimeError("the event loop was blocked while the work ran")
        return real(*args)
    monkeypatch.setattr(owner, name, slow)

    async def scenario():
        task = asyncio.ensure_future(send())
        for _ in range(4000):
            if "thread" in seen:
                break
            await asyncio.sleep(0.005)  # the loop is free: this coroutine keeps running
        gate.set()
        return await asyncio.wait_for(task, 30)
    return asyncio.run(scenario()), seen["thread"]


def test_the_concepts_route_loads_off_the_event_loop(sae_dir, monkeypatch):
    """While a (slow) SAE is read, the event loop keeps answering."""
    from saemnesia_pack.nodes import sae_folder
    save(sae_dir / "slow.safetensors")
    (status, body), thread = off_the_loop(monkeypatch, sae_folder, "plan_sae",
                                          lambda: serve_async("GET", "/saemnesia/concepts?sae=slow.safetensors"))
    assert status == 200, body
    assert [c["name"] for c in body["concepts"]] == ["cat"]
    assert thread is not threading.main_thread()


@pytest.mark.parametrize("content, words", [
    (b"\x00" * 20, "truncated"),
    (None, "nested too deeply"),
])
def test_the_concepts_route_answers_hostile_files_with_a_json_error(sae_dir, content, words):
    from saemnesia_pack.nodes import routes
    from safetensors.torch import save_file
    path = sae_dir / "hostile.safetensors"
    if content is None:
        save_file({"W_dec": torch.zeros(2, 2)}, str(path),
                  metadata={"format": "saemnesia-sae", "saemnesia": "[" * 100_000 + "]" * 100_000})
    else:
        path.write_bytes(content)
    for _ in range(2):  # the second answer comes from the failure cache, and says the same
        status, body = answer(asyncio.run(routes.get_concepts(request("sae=hostile.safetensors"))))
        assert status == 400 and words in body["error"] and "hostile.safetensors" in body["error"]
        assert str(sae_dir) not in body["error"]


async def serve_async(method: str, path: str, **kw) -> tuple[int, dict]:
    """One request to the pack's routes, over real HTTP (an aiohttp server with the pack's handlers)."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from saemnesia_pack.nodes import routes
    app = web.Application()
    app.router.add_get("/saemnesia/concepts", routes.get_concepts)
    app.router.add_post("/saemnesia/concepts", routes.post_concepts)
    app.router.add_get("/saemnesia/saes", routes.get_saes)
    async with TestClient(TestServer(app)) as client:
        resp = await client.request(method, path, **kw)
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


def serve(method: str, path: str, **kw) -> tuple[int, dict]:
    return asyncio.run(serve_async(method, path, **kw))


def test_the_concepts_route_parses_a_train_nodes_boxes(pack):
    """The picker's 'after training' list comes from the server's grammar, not a copy in the browser."""
    import json

    def post(body: bytes):
        return serve("POST", "/saemnesia/concepts", data=body, headers={"Content-Type": "application/json"})

    boxes = {"objects": "cat, dog", "styles": "ink", "templates": "a {object} in {style} style",
             "labelled_prompts": "style/sketch: a quick sketch"}
    status, body = post(json.dumps(boxes).encode())
    assert status == 200 and body["planned"] is True, body
    assert [(c["name"], c["kind"]) for c in body["concepts"]] == [("cat", "object"), ("dog", "object"),
                                                                 ("ink", "style"), ("sketch", "style")]
    assert body["list_separators"] == ",;\n"
    assert post(b"[1, 2]")[0] == 400 and post(b"not json")[0] == 400
    assert post(json.dumps({"objects": 3}).encode())[0] == 400
