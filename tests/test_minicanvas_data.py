"""MiniCanvas data generator: determinism, distinct classes, prompts and labels."""
import numpy as np
import pytest
import torch

from saemnesia_demo import data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_constants():
    assert len(data.OBJECTS) >= 6 and len(data.STYLES) >= 6
    assert len(set(data.OBJECTS)) == len(data.OBJECTS) and len(set(data.STYLES)) == len(data.STYLES)
    assert not set(data.OBJECTS) & set(data.STYLES)


def test_render_shape_range_and_seed_determinism():
    a = data.render(2, 3, np.random.default_rng(5))
    b = data.render(2, 3, np.random.default_rng(5))
    c = data.render(2, 3, np.random.default_rng(6))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_make_dataset_deterministic_and_balanced():
    x1, o1, s1 = data.make_dataset(80, seed=3)
    x2, o2, s2 = data.make_dataset(80, seed=3)
    x3, _, _ = data.make_dataset(80, seed=4)
    assert torch.equal(x1, x2) and torch.equal(o1, o2) and torch.equal(s1, s2)
    assert not torch.equal(x1, x3)
    n_pairs = len(data.OBJECTS) * len(data.STYLES)
    x, o, s = data.make_dataset(2 * n_pairs, seed=0)
    counts = torch.bincount(o * len(data.STYLES) + s, minlength=n_pairs)
    assert torch.all(counts == 2)


def test_all_classes_render_distinct_images():
    # same random draw (position/scale/colour jitter) for every pair: only the class differs
    imgs = {}
    for o in range(len(data.OBJECTS)):
        for s in range(len(data.STYLES)):
            imgs[(o, s)] = data.render(o, s, np.random.default_rng(11))
    keys = list(imgs)
    for i, k1 in enumerate(keys):
        for k2 in keys[i + 1 :]:
            diff = (imgs[k1] - imgs[k2]).abs().mean()
            assert diff > 0.01, (k1, k2, float(diff))


def test_shapes_cover_reasonable_area():
    # every object occupies a clearly visible part of the canvas (nothing vanishes)
    for o in range(len(data.OBJECTS)):
        img = data.render(o, data.STYLES.index("solid"), np.random.default_rng(0))
        fg = (img[0] - img[1]).abs() > 0.3  # red object on a near-grey background
        assert 0.05 < float(fg.float().mean()) < 0.8, data.OBJECTS[o]


def test_prompts_and_labels_consistent():
    rows = data.all_prompts()
    assert len(rows) == len(data.OBJECTS) * len(data.STYLES)
    assert len({p for _, _, p in rows}) == len(rows)
    for o, s, p in rows:
        assert p == f"a {data.OBJECTS[o]} in {data.STYLES[s]} style"
        assert data.prompt_for(o, s) == data.prompt_for(data.OBJECTS[o], data.STYLES[s]) == p
        assert data.parse_prompt(p) == (o, s)
    with pytest.raises(ValueError):
        data.prompt_for("dragon", "solid")
    with pytest.raises(ValueError):
        data.parse_prompt("a photo of a cat")


def test_uint8_roundtrip():
    x, _, _ = data.make_dataset(4, seed=1)
    y = data.from_uint8(data.to_uint8(x))
    assert (x - y).abs().max() <= 1 / 127.5 + 1e-6


def test_wide_background_option():
    a = data.render(0, 0, np.random.default_rng(3), background="wide")
    b = data.render(0, 0, np.random.default_rng(3), background="wide")
    c = data.render(0, 0, np.random.default_rng(3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        data.render(0, 0, np.random.default_rng(3), background="plaid")
