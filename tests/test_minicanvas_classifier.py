"""MiniCanvas classifiers: safetensors round trip and the shipped weights' accuracy."""
import json

import pytest
import torch
from safetensors import safe_open

from saemnesia_demo import classifier, data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = classifier.MiniCanvasClassifiers(width=8)
    p = tmp_path / "cls.safetensors"
    classifier.save_classifiers(m, p, {"object_acc": 0.5})
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write leaves no temp file
    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()[classifier.META_KEY])
    assert meta["objects"] == list(data.OBJECTS) and meta["styles"] == list(data.STYLES)
    m2, meta2 = classifier.load_classifiers(p)
    assert meta2["object_acc"] == 0.5
    x, _, _ = data.make_dataset(8, seed=0)
    m.eval()
    assert torch.allclose(m.object(x), m2.object(x)) and torch.allclose(m.style(x), m2.style(x))
    po, ps = m2.predict(x)
    assert po.shape == ps.shape == (8,)


def test_augment_keeps_shape_and_range():
    x, _, _ = data.make_dataset(6, seed=0)
    y = classifier.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.abs().max()) <= 1
    assert not torch.equal(x, y)


@pytest.mark.skipif(not classifier.DEFAULT_PATH.exists(), reason="shipped classifiers not trained yet")
def test_shipped_classifiers_accuracy():
    model, meta = classifier.load_classifiers()
    assert meta["object_acc"] >= 0.98 and meta["style_acc"] >= 0.98
    # a fresh held-out set (a seed used neither for training nor for the recorded test)
    x, o, s = data.make_dataset(216, seed=987_654)
    po, ps = model.predict(x)
    assert float((po == o).float().mean()) >= 0.98
    assert float((ps == s).float().mean()) >= 0.98
