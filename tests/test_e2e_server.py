"""End to end: the real ComfyUI server with the pack, driven over HTTP like a user's script."""
import os

import pytest

pytestmark = pytest.mark.e2e

NODES = ["SAEmnesiaLoadSAE", "SAEmnesiaEraseConcepts", "SAEmnesiaInspectNeuron", "SAEmnesiaTrainSAEFromPrompts"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfy, pack):
    from tools import comfy_env
    from tools.comfy_server import ComfyServer
    from saemnesia_core import SAEInfo, TopKSAE, save_sae
    from saemnesia_core.concepts import Concept, ConceptIndex, Selection
    base = tmp_path_factory.mktemp("comfy-base")
    sae = TopKSAE(1280, 2560, 16)
    sae.requires_grad_(False)
    index = ConceptIndex(timesteps=[999.0, 0.0], default_mode="ablate", default_multiplier=-3.0,
                         concepts={"thing": Concept("thing", "object", None, [Selection([1, 2], [1, 1], [1, 1], [0, 0])] * 2)})
    sae_path = str(base / "thing.safetensors")
    save_sae(sae_path, sae, SAEInfo("output_blocks.5.1", "sd1", index, {}))
    srv = ComfyServer(str(base), {"checkpoints": {"sd15-random.safetensors": comfy_env.sd15_random_checkpoint()},
                                  "sae": {"thing.safetensors": sae_path}})
    srv.start()
    yield srv
    srv.stop()


def shipped_saes() -> set[str]:
    """Names of the SAE files shipped in the pack's models/sae (none while it is absent)."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "sae")
    return {os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
            for d, _, files in os.walk(folder) for f in files if f.endswith(".safetensors")}


def combo_options(spec):
    """V1 combos are [[options], {...}]; V3 ones are ["COMBO", {"options": [...]}]."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def test_object_info_shows_the_four_nodes_with_their_inputs(server):
    info = server.get("/object_info")
    for node in NODES:
        assert node in info, f"{node} missing; server log:\n{server.read_log()[-3000:]}"
        assert info[node]["category"] == "SAEmnesia"
    saes = combo_options(info["SAEmnesiaLoadSAE"]["input"]["required"]["sae_name"])
    # the server's models/sae and the SAEs shipped in the pack's own models/sae (one sorted list)
    assert sorted(saes) == saes and set(saes) == {"thing.safetensors"} | shipped_saes()
    erase = info["SAEmnesiaEraseConcepts"]["input"]["required"]
    assert {"model", "sae", "concepts", "mode", "strength", "start_percent", "end_percent", "apply_to"} <= set(erase)
    assert combo_options(erase["mode"]) == ["auto", "neuron", "ablate", "replace"]
    assert info["SAEmnesiaEraseConcepts"]["output"] == ["MODEL"]
    assert info["SAEmnesiaInspectNeuron"]["output"] == ["IMAGE", "STRING"]
    assert info["SAEmnesiaTrainSAEFromPrompts"]["output"][0] == "SAE"


def test_concepts_route(server):
    body = server.get("/saemnesia/concepts?sae=thing.safetensors")
    assert body["hook_point"] == "output_blocks.5.1" and body["concepts"][0]["name"] == "thing"
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get("/saemnesia/concepts?sae=../../etc/passwd")
    assert e.value.code == 400


def graph():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15-random.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat in ink style"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "SAEmnesiaLoadSAE", "inputs": {"sae_name": "thing.safetensors"}},
        "6": {"class_type": "SAEmnesiaEraseConcepts", "inputs": {
            "model": ["1", 0], "sae": ["5", 0], "concepts": "thing", "mode": "ablate", "strength": 1.0,
            "multiplier": 0.0, "apply_to": "both", "start_percent": 0.0, "end_percent": 1.0}},
        "12": {"class_type": "SAEmnesiaTrainSAEFromPrompts", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latent": ["4", 0], "name": "e2e_trained", "objects": "cat, dog",
            "styles": "ink", "templates": "a {object} in {style} style", "labelled_prompts": "", "hook_point": "auto",
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "seeds_per_prompt": 1, "seed": 0,
            "expansion": 1, "k": 8, "train_steps": 5, "batch_size": 16, "learning_rate": 0.001, "supervised": True,
            "overwrite": True}},
        "13": {"class_type": "SAEmnesiaEraseConcepts", "inputs": {
            "model": ["6", 0], "sae": ["12", 0], "concepts": "cat", "mode": "neuron", "strength": 1.0,
            "multiplier": 0.0, "apply_to": "cond only", "start_percent": 0.0, "end_percent": 1.0}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["13", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 1,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "e2e_erased"}},
        "10": {"class_type": "SAEmnesiaInspectNeuron", "inputs": {
            "model": ["1", 0], "sae": ["5", 0], "vae": ["1", 2], "positive": ["2", 0], "show": "concept", "concept": "thing", "neuron": 0,
            "step": 1, "steps": 2, "scheduler": "normal", "seed": 0, "latent": ["7", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "e2e_heatmap"}},
    }


def test_a_graph_with_all_four_nodes_runs_over_http(server):
    entry = server.run(graph())
    images = {nid: out["images"] for nid, out in entry["outputs"].items() if "images" in out}
    assert set(images) == {"9", "10", "11"}  # 10: the heatmap preview shown on the Inspect node
    for nid in ("9", "11"):
        f = images[nid][0]
        assert os.path.isfile(os.path.join(server.base, "output", f["subfolder"], f["filename"]))
    assert os.path.isfile(os.path.join(server.base, "models", "sae", "e2e_trained.safetensors"))
    assert "Saved" in entry["outputs"]["12"]["text"][0]


def test_bad_input_is_reported_and_the_server_keeps_running(server):
    bad = graph()
    bad["6"]["inputs"]["concepts"] = "no such concept"
    for k in ("12", "13", "10", "11"):
        bad.pop(k)
    bad["7"]["inputs"]["model"] = ["6", 0]
    with pytest.raises(RuntimeError, match="Unknown concept 'no such concept'.*thing"):
        server.run(bad)
    assert server.get("/object_info/SAEmnesiaLoadSAE")  # still serving
