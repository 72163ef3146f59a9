"""End to end: the real ComfyUI server with the pack, driven over HTTP like a user's script."""
import os

import pytest
from conftest import HOSTILE_CONCEPT

from tools import workflows as wf

pytestmark = pytest.mark.e2e

NODES = ["SAEmnesiaLoadSAE", "SAEmnesiaEraseConcepts", "SAEmnesiaInspectNeuron", "SAEmnesiaTrainSAEFromPrompts"]


@pytest.fixture()
def server(comfy_server):
    return comfy_server  # one server for the session, with thing.safetensors (tests/conftest.py)


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
    # the server's models/sae and the SAEs shipped in the pack's own models/sae (one sorted list;
    # other tests on this session's server may have trained more by now)
    assert sorted(saes) == saes and {"thing.safetensors", "hostile.safetensors", wf.SD15_SAE} | shipped_saes() <= set(saes)
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


def test_concepts_route_refuses_a_hostile_concept_name(server):
    """Issue 13: a concept name that is markup in the browser. The server refuses the file with a
    message that names the concept and the fix, and shows no server path."""
    import json
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get("/saemnesia/concepts?sae=hostile.safetensors")
    assert e.value.code == 400
    msg = json.loads(e.value.read())["error"]
    assert "hostile.safetensors" in msg and repr(HOSTILE_CONCEPT) in msg and "may not contain" in msg, msg
    assert server.base not in msg
    # the node refuses it the same way when a graph loads it
    bad = {"1": {"class_type": "SAEmnesiaLoadSAE", "inputs": {"sae_name": "hostile.safetensors"}},
           "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}
    with pytest.raises(RuntimeError, match="may not contain"):
        server.run(bad)


def test_only_listed_sae_files_are_read(server):
    """A name Load SAE does not list (here: the SAeUron folder's cfg.json) is not read, and the
    message names no server folder."""
    import json
    import urllib.error
    folder = wf.SD15_SAE.split("/")[0]
    for name in (f"{folder}/cfg.json", f"{folder}"):
        with pytest.raises(urllib.error.HTTPError) as e:
            server.get(f"/saemnesia/concepts?sae={name}")
        msg = json.loads(e.value.read())["error"]
        assert e.value.code == 400 and "not found in the sae folder" in msg and server.base not in msg, msg


def graph():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": wf.SD15_CHECKPOINT}},
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


# --- bad inputs (issue 13, items 4 and 5) ---------------------------------------------------
def queue(server, prompt):
    """POST /prompt; (HTTP status, JSON body), validation errors included."""
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(server.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def erase_graph(**erase_inputs):
    g = {k: v for k, v in graph().items() if k in ("1", "5", "6")}
    g["6"]["inputs"].update(erase_inputs)
    g["9"] = {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}}
    return g


@pytest.mark.parametrize("inputs, widgets, words", [
    ({"start_percent": 0.8, "end_percent": 0.2}, {"start_percent", "end_percent"}, "is after end_percent (0.2); swap them"),
    ({"start_percent": float("nan")}, {"start_percent", "end_percent"}, "start_percent is nan"),
    ({"end_percent": float("inf")}, {"start_percent", "end_percent"}, "end_percent is inf"),
    ({"end_percent": 1.5}, {"start_percent", "end_percent"}, "end_percent is 1.5"),
    # not declared by validate_inputs: ComfyUI's own range check, on that widget only
    ({"multiplier": float("inf")}, {"multiplier"}, "bigger than max of 100.0"),
    ({"strength": -1.0}, {"strength"}, "smaller than min of 0.0"),
])
def test_erase_window_and_ranges_are_refused_on_their_own_widgets(server, inputs, widgets, words):
    status, body = queue(server, erase_graph(**inputs))
    assert status == 400, body
    errors = body["node_errors"]["6"]["errors"]
    assert {e["extra_info"]["input_name"] for e in errors} == widgets  # not on every input of the node
    assert len({e["details"].split(" - ")[-1] for e in errors}) == 1  # one message, however many widgets
    assert all(words in e["message"] + e["details"] for e in errors), errors


@pytest.mark.parametrize("inputs, words", [
    ({"strength": float("nan")}, "strength is nan"),
    ({"multiplier": float("nan")}, "multiplier is nan"),
    ({"apply_to": "left half"}, "apply_to is 'left half'; use one of: both, cond only"),
])
def test_erase_nan_and_unknown_apply_to_fail_before_sampling(server, inputs, words):
    # NaN passes ComfyUI's range checks and V3 combos are not checked against their options:
    # the node refuses them when it runs, before any sampler (today: black images, no error)
    with pytest.raises(RuntimeError) as e:
        server.run(erase_graph(**inputs))
    assert words in str(e.value) and "SAEError" in str(e.value)


def write_hostile(folder, name, record_text):
    import torch
    from safetensors.torch import save_file
    sae = {"W_enc": torch.zeros(8, 4), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)}
    save_file(sae, os.path.join(folder, name), metadata={"format": "saemnesia-sae", "saemnesia": record_text})


@pytest.mark.parametrize("name, record, words", [
    ("hostile_deep.safetensors", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("hostile_list.safetensors", "[1, 2]", "JSON list, not an object"),
    ("hostile_nan.safetensors", ('{"format_version": 1, "hook_point": "output_blocks.5.1", "k": 2, "concept_index": '
                                 '{"concepts": {"cat": {"multiplier": NaN, "selections": []}}}}'), "multiplier is nan"),
    ("hostile_version.safetensors", '{"format_version": "1", "k": 2}', "format_version is '1'"),
])
def test_hostile_sae_file_is_a_node_error_and_a_json_route_error(server, name, record, words):
    import json
    import urllib.error
    folder = os.path.join(server.base, "models", "sae")
    write_hostile(folder, name, record)
    with pytest.raises(urllib.error.HTTPError) as e:
        server.get(f"/saemnesia/concepts?sae={name}")
    assert e.value.code == 400
    body = json.loads(e.value.read())
    assert name in body["error"] and words in body["error"] and server.base not in body["error"]
    with pytest.raises(RuntimeError) as e:
        server.run({"1": {"class_type": "SAEmnesiaLoadSAE", "inputs": {"sae_name": name}},
                    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}})
    assert "SAEFileError" in str(e.value) and name in str(e.value) and words in str(e.value)
    # fixed in place (new size and mtime): the route reads it again instead of the cached failure
    write_hostile(folder, name, '{"format_version": 1, "hook_point": "output_blocks.5.1", "k": 2}')
    assert server.get(f"/saemnesia/concepts?sae={name}")["hook_point"] == "output_blocks.5.1"
    assert server.get("/object_info/SAEmnesiaLoadSAE")  # still serving
