"""`make demo` builds its graph from the shipped workflow, with the shipped text-state SAE."""
import importlib.util
import os

import pytest

from saemnesia_core import load_sae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("demo_script", os.path.join(REPO, "scripts", "demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


# docs/minicanvas.md: one SAE on the text states every cross-attention reads, for both kinds
@pytest.mark.parametrize("concept,kind,block", [("star", "object", "context"), ("stripes", "style", "context")])
def test_graph_erases_the_concept_with_the_sae_of_its_kind(concept, kind, block):
    graph, saves = demo.erase_graph(concept, "a star in stripes style", 3)
    by_type = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert by_type["SAEmnesiaEraseConcepts"]["concepts"] == concept
    assert by_type["EmptyChromaRadianceLatentImage"]["batch_size"] == 3
    sae_file = by_type["SAEmnesiaLoadSAE"]["sae_name"]
    loaded = load_sae(os.path.join(REPO, "models", "sae", sae_file))
    assert loaded.info.hook_point == block
    assert loaded.index.concepts[concept].kind == kind
    assert set(saves) == {"before", "after"}


def test_dit_graph_loads_the_dit_and_samples_as_its_family_does():
    graph, _ = demo.erase_graph("star", "a star in stripes style", 2, model="dit")
    by_type = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert by_type["SAEmnesiaLoadDemoModel"]["unet_name"] == "demo_dit.safetensors"
    samplers = [n["inputs"] for n in graph.values() if n["class_type"] == "KSampler"]
    assert len(samplers) == 2 and all((s["sampler_name"], s["scheduler"]) == ("euler", "simple") for s in samplers)


def test_unknown_concept_names_the_known_ones():
    with pytest.raises(SystemExit, match="'hart' is not a MiniCanvas concept.*heart"):
        demo.concept_kind("hart")


@pytest.mark.parametrize("model", ["unet", "dit"])
def test_broken_check_flags_noise_and_passes_the_same_picture(tmp_path, model):
    """The demo's report uses the benchmark's check with the model it drew with: a picture drowned
    in noise is broken, the unedited picture itself is not."""
    import numpy as np
    from PIL import Image

    from saemnesia_demo import data
    img = data.render(4, 1, np.random.default_rng(0))  # a star in stripes, [-1, 1]
    clean = ((img.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype("uint8")
    noisy = (clean.astype(np.float32) + np.random.default_rng(1).normal(0, 60, clean.shape)).clip(0, 255).astype("uint8")
    paths = {}
    for name, arr in (("clean", clean), ("noisy", noisy)):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(arr).resize((128, 128), Image.NEAREST).save(paths[name])  # saved 4x, as the workflow does
    assert demo.broken([paths["clean"], paths["clean"]], [paths["clean"], paths["noisy"]], model) == [False, True]
