import pytest
import torch
from test_core_sae import make_sae

from saemnesia_core import ConceptEraser, SAEError, split_list
from saemnesia_core.concepts import Concept, ConceptIndex, Selection
from saemnesia_core.erasure import ErasureTarget, ablate, detect, replace, scale_neurons


def firing_setup(seed=0):
    """An SAE and inputs where latent L fires strongly on the first half of the tokens only."""
    torch.manual_seed(seed)
    sae = make_sae(d=16, n=64, k=4, seed=seed)
    L = 7
    x = torch.randn(40, 16) * 0.1
    x[:20] += 5 * sae.W_enc[L].detach() / sae.W_enc[L].detach().norm()
    return sae, L, x


def target(L, thr=0.0, mean=1.0, mult=-2.0):
    return ErasureTarget(torch.tensor([L]), torch.tensor([thr]), torch.tensor([mean]), torch.tensor([mult]))


def test_ablate_changes_only_tokens_where_the_latent_fires():
    sae, L, x = firing_setup()
    acts = sae.latent_activations(x, torch.tensor([L]))[:, 0]
    thr = float(acts[acts > 0].min()) - 1e-3 if (acts > 0).any() else 0.0
    out = ablate(x, sae, target(L, thr=thr, mean=2.0, mult=-3.0))
    changed = (out != x).any(1)
    assert changed[:20].all()
    assert torch.equal(out[~changed], x[~changed])  # untouched tokens are bit-identical
    # where it fired, the latent now sits at multiplier * concept mean (up to SAE re-encoding)
    assert torch.equal(changed, acts > thr)


def test_ablate_target_value_is_multiplier_times_concept_mean():
    sae, L, x = firing_setup()
    out = ablate(x, sae, target(L, mean=2.0, mult=-3.0))
    code = sae.encode(x)
    slot = (code.indices == L)
    old = (code.values * slot).sum(1)
    # x + (new - old) * W_dec[L] exactly
    expected = x + ((-6.0 - old) * slot.any(1)).unsqueeze(1) * sae.W_dec[L].detach()
    assert torch.allclose(out, expected, atol=1e-5)


def test_strength_zero_and_multiplier_one_are_identity():
    sae, L, x = firing_setup()
    assert torch.equal(ablate(x, sae, target(L), strength=0.0), x)
    assert torch.allclose(scale_neurons(x, sae, target(L, mult=1.0)), x)
    assert torch.equal(replace(x.view(2, 20, 16), sae, target(L), strength=0.0), x.view(2, 20, 16))


def test_scale_neurons_scales_the_latents_contribution():
    sae, L, x = firing_setup()
    out = scale_neurons(x, sae, target(L, mult=-1.5))
    acts = sae.latent_activations(x, torch.tensor([L]))[:, 0]
    expected = x + (-2.5 * acts).unsqueeze(1) * sae.W_dec[L].detach()
    assert torch.allclose(out, expected, atol=1e-5)


def test_replace_copies_vectors_from_undetected_positions_of_the_same_map():
    sae, L, x = firing_setup()
    maps = torch.stack([x, x.flip(0)])  # map 1 has the concept at the other end
    mask, _ = detect(maps.view(-1, 16), sae, target(L, thr=0.0))
    mask = mask.view(2, 40)
    out = replace(maps, sae, target(L, thr=0.0), generator=torch.Generator().manual_seed(0))
    for m in range(2):
        assert mask[m].any() and (~mask[m]).any()
        undetected = maps[m][~mask[m]]
        assert torch.equal(out[m][~mask[m]], undetected)  # undetected positions untouched
        for v in out[m][mask[m]]:
            assert (undetected == v).all(1).any()  # every written vector comes from this map's own undetected set
        others = maps[1 - m][~mask[1 - m]]
        assert not any((others == v).all(1).any() and not (undetected == v).all(1).any() for v in out[m][mask[m]])


def test_replace_falls_back_to_least_detected_positions_when_all_fire():
    sae, L, x = firing_setup()
    x_all = x[:20].unsqueeze(0)  # every position has the concept
    mask, score = detect(x_all[0], sae, target(L, thr=0.0))
    assert mask.all()
    out = replace(x_all, sae, target(L, thr=0.0), generator=torch.Generator().manual_seed(0))
    donors = x_all[0][score.argsort()[:5]]
    assert all((donors == v).all(1).any() for v in out[0])


def test_nothing_detected_means_no_change():
    sae, L, x = firing_setup()
    out = replace(x[20:].unsqueeze(0), sae, target(L, thr=1e9))
    assert torch.equal(out, x[20:].unsqueeze(0))


def _index(L):
    sels = [Selection([L], [1.0], [2.0], [0.0]), Selection([L], [1.0], [2.0], [1e9])]
    return ConceptIndex(timesteps=[900.0, 100.0], default_mode="ablate", default_multiplier=-4.0,
                        concepts={"thing": Concept("thing", "object", L, sels)})


def test_eraser_uses_the_timestep_bucket_and_rows_mask():
    sae, L, x = firing_setup()
    h = torch.stack([x, x]).permute(0, 2, 1).reshape(2, 16, 5, 8)  # [B, C, H, W]
    er = ConceptEraser(sae, _index(L), ["THING"], mode="ablate")
    out_early = er(h, 880.0)
    assert not torch.equal(out_early, h)
    assert torch.equal(er(h, 120.0), h)  # late bucket: threshold 1e9, never fires
    rows = torch.tensor([True, False])
    out_rows = er(h, 880.0, rows)
    assert not torch.equal(out_rows[0], h[0]) and torch.equal(out_rows[1], h[1])
    assert torch.allclose(out_rows[0], out_early[0])


def test_eraser_modes_and_raw_neurons():
    sae, L, x = firing_setup()
    h = x.unsqueeze(0)
    idx = _index(L)
    n = ConceptEraser(sae, idx, ["thing"], mode="neuron")(h, 900.0)
    raw = ConceptEraser(sae, idx, [f"neuron:{L}"], mode="neuron", multiplier=-4.0)(h, 900.0)
    assert torch.allclose(n, raw)  # concept 'thing' is latent L with default multiplier -4
    assert not torch.equal(ConceptEraser(sae, idx, ["thing"], mode="replace")(h, 900.0), h)
    assert ConceptEraser(sae, idx, ["thing"]).mode == "ablate"  # auto -> the index's default
    with pytest.raises(SAEError, match="mode"):
        ConceptEraser(sae, idx, ["thing"], mode="explode")
    with pytest.raises(SAEError, match="0..63"):
        ConceptEraser(sae, idx, ["neuron:64"])
    with pytest.raises(KeyError, match="thing"):
        ConceptEraser(sae, idx, ["dog"])
    with pytest.raises(SAEError, match="channels"):
        ConceptEraser(sae, idx, ["thing"])(torch.randn(1, 8, 2, 2), 900.0)


def test_one_list_grammar_for_every_box():
    assert split_list("cat, Van Gogh\n neuron:12;;") == ["cat", "Van Gogh", "neuron:12"]
    assert split_list("  ") == [] and split_list(None) == []
    assert split_list([" a ", "", "b"]) == ["a", "b"]


def test_eraser_placed_in_another_dtype_edits_in_it():
    sae, L, x = firing_setup()
    er = ConceptEraser(sae, _index(L), ["thing"], mode="neuron")
    copy_ = er.place(dtype=torch.float64)  # a host moving its model moves the eraser's SAE copy with it
    assert copy_.W_dec.dtype == torch.float64 and copy_ is not sae
    assert er.place() is copy_  # None keeps where it is
    h = x.double().unsqueeze(0)
    out = er(h, 900.0)
    assert out.dtype == torch.float64 and not torch.equal(out, h)


def test_a_map_without_the_concept_is_returned_as_is():
    sae, L, x = firing_setup()
    h = x.T.reshape(1, 16, 5, 8)
    for mode in ("ablate", "replace"):
        er = ConceptEraser(sae, _index(L), ["thing"], mode=mode)
        assert er(h, 120.0) is h  # late bucket's threshold is never reached: no copy, no re-layout
        assert er(h, 880.0) is not h


def test_detect_scale_sets_where_replace_detects_and_round_trips():
    sae, L, x = firing_setup()
    h = x[:20].unsqueeze(0)  # every token has latent L active, at about the same strength
    strength = detect(h[0], sae, target(L))[1]
    thr = float(strength.median())  # above this on about half of the tokens
    idx = ConceptIndex(timesteps=[500.0], default_mode="replace",
                       concepts={"thing": Concept("thing", "object", L, [Selection([L], [1.0], [2.0], [thr])])})
    as_stored = ConceptEraser(sae, idx, ["thing"]).targets[0]
    assert float(as_stored.threshold[0]) == pytest.approx(thr)
    idx.detect_scale = 0.0  # wherever the latent is active: every token
    anywhere = ConceptEraser(sae, ConceptIndex.from_json(idx.to_json()), ["thing"]).targets[0]
    assert float(anywhere.threshold[0]) == 0.0
    assert int(detect(h[0], sae, as_stored)[0].sum()) < 20 == int(detect(h[0], sae, anywhere)[0].sum())
    # only replace reads it: ablate keeps the concept's firing threshold
    assert float(ConceptEraser(sae, idx, ["thing"], mode="ablate").targets[0].threshold[0]) == pytest.approx(thr)
    with pytest.raises(SAEError, match="detect_scale"):
        ConceptIndex.from_json({**idx.to_json(), "detect_scale": -1})
