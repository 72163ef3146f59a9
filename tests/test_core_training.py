import json
import os

import pytest
import torch
from synthetic import OBJECTS, STYLES, write_store

from saemnesia_core import SAEError, TrainingCancelled
from saemnesia_core.activations import ActivationWriter
from saemnesia_core.prompts import LabelledPrompt
from saemnesia_core.training import CHECKPOINT, TrainConfig, Trainer, train_sae

CFG = dict(n_latents=64, k=4, batch_size=128, dead_tokens=2000, checkpoint_every=10, seed=3, lr=5e-3)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s, _ = write_store(str(tmp_path_factory.mktemp("acts")))
    return s


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    return train_sae(store, TrainConfig(steps=300, **CFG), str(tmp_path_factory.mktemp("work")))


def test_store_stream_is_deterministic_shuffled_and_resumable(store):
    a = [b[0] for b in store.batches(100, seed=1, epoch=0, buffer_shards=2)]
    b = [b[0] for b in store.batches(100, seed=1, epoch=0, buffer_shards=2)]
    c = [b[0] for b in store.batches(100, seed=1, epoch=0, buffer_shards=2, skip=3)]
    d = [b[0] for b in store.batches(100, seed=1, epoch=1, buffer_shards=2)]
    assert len(a) == store.n_tokens // 100 == store.batches_per_epoch(100)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a[3:], c)) and len(c) == len(a) - 3
    assert not torch.equal(a[0], d[0])
    rows = torch.cat(a)
    assert rows.unique(dim=0).shape[0] == rows.shape[0]  # no token twice in one epoch


def test_writer_refuses_nan_and_wrong_width(tmp_path):
    w = ActivationWriter(str(tmp_path), 4, [LabelledPrompt("a", {})])
    with pytest.raises(SAEError, match="NaN"):
        w.add(torch.tensor([[1.0, float("nan"), 0, 0]]), 500.0, 0)
    with pytest.raises(SAEError, match="d_in=4"):
        w.add(torch.zeros(2, 5), 500.0, 0)
    with pytest.raises(SAEError, match="no activations"):
        w.close()


def test_training_reconstructs_and_supervision_ties_each_concept_to_its_own_latent(trained, store):
    sae, index, record = trained
    assert record["fvu"] < 0.12, record["fvu"]
    assert record["supervised"]
    latents = {n: index.get(n).latent for n in OBJECTS + STYLES}
    assert len(set(latents.values())) == len(latents)  # one distinct latent per concept
    # each dedicated latent is on for its concept's prompts and (mostly) off for others
    acts, _, pids = next(store.iter_tokens(chunk=100000))
    labels = store.prompt_labels[pids]
    pre = sae.pre_logits(acts)
    for ci, name in enumerate(store.concept_names):
        on = labels[:, ci] > 0
        fired = pre[:, latents[name]] > 0
        kind = store.concepts[name]
        if kind == "style":  # styles are everywhere in the picture
            assert fired[on].float().mean() > 0.9 and fired[~on].float().mean() < 0.1, name
        else:  # objects: the dedicated latent separates concept prompts from the rest
            assert fired[on].float().mean() > fired[~on].float().mean() + 0.4, name
    assert index.default_mode == "neuron"
    # the dedicated latents are reserved (outside the TopK competition): decoded where positive
    assert sorted(sae.reserved.tolist()) == sorted(latents.values())
    code = sae.encode(acts[:500])
    assert all((code.indices == latents[n]).any(1).all() for n in latents)
    assert len(index.timesteps) == 3 and all(len(c.selections) == 3 for c in index.concepts.values())


def test_unsupervised_training_selects_latents_per_timestep(store, tmp_path):
    sae, index, record = train_sae(store, TrainConfig(steps=150, supervised=False, quantile=0.95, **CFG), str(tmp_path))
    assert not record["supervised"] and index.default_mode == "ablate"
    for name in OBJECTS + STYLES:
        c = index.get(name)
        assert c.latent is None and len(c.selections) == 3
        for sel in c.selections:
            assert 1 <= len(sel.latents) <= 8 and all(s > 0 for s in sel.scores)
            assert all(m > t for m, t in zip(sel.concept_mean, sel.threshold))  # fires more on the concept


def test_cancel_keeps_checkpoint_and_resume_matches_uninterrupted_run(store, tmp_path):
    cfg = TrainConfig(steps=40, **CFG)
    full = Trainer(store, cfg, str(tmp_path / "full")).train()

    stop = {"now": False}

    def progress(step, total, metrics):
        stop["now"] = step >= 25

    t = Trainer(store, cfg, str(tmp_path / "cut"), progress=progress, should_cancel=lambda: stop["now"])
    with pytest.raises(TrainingCancelled):
        t.train()
    ckpt = tmp_path / "cut" / CHECKPOINT
    assert ckpt.exists()
    resumed = Trainer(store, cfg, str(tmp_path / "cut"))
    assert resumed.resumed and resumed.state.step == 25
    sae = resumed.train()
    for n in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(sae, n), getattr(full, n), atol=1e-5), n
    assert resumed.state.assignment == Trainer(store, cfg, str(tmp_path / "full")).state.assignment


def test_resume_with_other_settings_is_refused(store, tmp_path):
    Trainer(store, TrainConfig(steps=5, **CFG), str(tmp_path)).train()
    with pytest.raises(SAEError, match="other training settings"):
        Trainer(store, TrainConfig(steps=5, **{**CFG, "lr": 1e-3}), str(tmp_path))


def test_divergence_keeps_the_last_good_checkpoint(store, tmp_path):
    t = Trainer(store, TrainConfig(steps=30, **CFG), str(tmp_path))
    orig = t.store.batches

    def poisoned(*a, **k):
        for i, (x, ts, p) in enumerate(orig(*a, **k)):
            if t.state.step >= 15:
                x = x * float("nan")
            yield x, ts, p
    t.store.batches = poisoned
    with pytest.raises(SAEError, match="diverged"):
        t.train()
    meta = json.loads(__import__("saemnesia_core.checkpoint", fromlist=["x"]).read_safetensors_metadata(
        os.path.join(str(tmp_path), CHECKPOINT))["state"])
    assert meta["step"] == 10  # the last checkpoint before the NaNs, not overwritten
    t.store.batches = orig


def test_too_few_tokens_for_a_batch(store, tmp_path):
    with pytest.raises(SAEError, match="fewer than one batch"):
        Trainer(store, TrainConfig(steps=5, **{**CFG, "batch_size": 10 ** 6}), str(tmp_path))


def test_changed_settings_can_restart_instead_of_failing(store, tmp_path):
    Trainer(store, TrainConfig(steps=5, **CFG), str(tmp_path)).train()
    t = Trainer(store, TrainConfig(steps=5, **{**CFG, "lr": 1e-3}), str(tmp_path), restart_on_mismatch=True)
    assert not t.resumed and t.state.step == 0
