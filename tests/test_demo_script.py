"""`make demo` builds its graph from the shipped workflow: the concept decides which SAE loads."""
import importlib.util
import os

import pytest

from saemnesia_core import load_sae

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("demo_script", os.path.join(REPO, "scripts", "demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


# docs/minicanvas.md: objects are read at the 8x8 block, styles at the 16x16 one
@pytest.mark.parametrize("concept,kind,block", [("star", "object", "output_blocks.1.1"),
                                                 ("stripes", "style", "output_blocks.3.1")])
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


def test_unknown_concept_names_the_known_ones():
    with pytest.raises(SystemExit, match="'hart' is not a MiniCanvas concept.*heart"):
        demo.concept_kind("hart")
