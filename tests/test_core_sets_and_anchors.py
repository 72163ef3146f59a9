"""SAE sets (one file, one SAE per hook point) and neuron-mode anchors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_core_sae import make_sae

from saemnesia_core import ConceptEraser, SAEError, SAEFileError, SAEInfo, load_sae, save_sae
from saemnesia_core.checkpoint import CONTEXT, save_sae_set
from saemnesia_core.concepts import Concept, ConceptIndex, assign_anchors
from saemnesia_core.erasure import ErasureTarget, scale_neurons
from saemnesia_core.intervention import split_anchor


def supervised_index(names_kinds: dict[str, str], latents: dict[str, int]) -> ConceptIndex:
    idx = ConceptIndex(default_mode="neuron", default_multiplier=0.0)
    for name, kind in names_kinds.items():
        idx.concepts[name] = Concept(name, kind, latents[name])
    return idx


def test_set_roundtrip_keeps_every_member_and_its_own_index(tmp_path):
    a, b = make_sae(d=12, n=48, k=4, seed=1), make_sae(d=16, n=64, k=8, seed=2)
    a.set_reserved([3, 5])
    ia = supervised_index({"star": "object", "dots": "style"}, {"star": 3, "dots": 5})
    ib = supervised_index({"star": "object", "dots": "style"}, {"star": 40, "dots": 41})
    path = str(tmp_path / "set.safetensors")
    save_sae_set(path, [(a, SAEInfo(CONTEXT, "demo", ia)), (b, SAEInfo("output_blocks.3.1", "demo", ib))],
                 {"note": "one collection"})
    loaded = load_sae(path)
    assert loaded.hook_points == [CONTEXT, "output_blocks.3.1"]
    assert [m.sae.d_in for m in loaded.blocks] == [12, 16]
    assert torch.equal(loaded.blocks[1].sae.W_dec, b.W_dec) and torch.equal(loaded.blocks[0].sae.W_enc, a.W_enc)
    assert loaded.blocks[0].sae.reserved.tolist() == [3, 5]
    assert loaded.blocks[1].index.get("star").latent == 40  # each member keeps its own latent numbers
    assert loaded.info.training == {"note": "one collection"}
    assert "2 hook points" in loaded.describe() and "output_blocks.3.1: d_in 16, 64 latents, k 8" in loaded.describe()


def test_one_member_set_is_a_plain_v1_file_and_v1_files_load_as_one_block(tmp_path):
    sae = make_sae(d=8, n=32, k=4)
    path = str(tmp_path / "one.safetensors")
    save_sae_set(path, [(sae, SAEInfo("output_blocks.1.1", "demo"))])
    record = json.loads(load_file_meta(path)["saemnesia"])
    assert record["format_version"] == 1 and record["hook_point"] == "output_blocks.1.1"
    loaded = load_sae(path)
    assert loaded.blocks == [loaded] and loaded.hook_points == ["output_blocks.1.1"]


def load_file_meta(path):
    from saemnesia_core.checkpoint import read_safetensors_metadata
    return read_safetensors_metadata(path)


def test_set_naming_a_block_twice_is_refused_on_save_and_on_load(tmp_path):
    a, b = make_sae(d=8, n=32, k=4, seed=1), make_sae(d=8, n=32, k=4, seed=2)
    path = str(tmp_path / "twice.safetensors")
    with pytest.raises(SAEFileError, match="one SAE per block"):
        save_sae_set(path, [(a, SAEInfo("output_blocks.1.1")), (b, SAEInfo("output_blocks.1.1"))])
    save_sae_set(path, [(a, SAEInfo("output_blocks.1.1")), (b, SAEInfo("output_blocks.2.1"))])
    meta = load_file_meta(path)
    record = json.loads(meta["saemnesia"])
    record["blocks"][1]["hook_point"] = "output_blocks.1.1"
    save_file(load_file(path), path, metadata={**meta, "saemnesia": json.dumps(record)})
    with pytest.raises(SAEFileError, match="names a block twice"):
        load_sae(path)


def test_set_file_without_block_list_is_a_clear_error(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    save_sae(path, make_sae(d=8, n=32, k=4), SAEInfo("output_blocks.1.1"))
    meta = load_file_meta(path)
    record = json.loads(meta["saemnesia"])
    record["format_version"] = 2
    save_file(load_file(path), path, metadata={**meta, "saemnesia": json.dumps(record)})
    with pytest.raises(SAEFileError, match="must list its blocks"):
        load_sae(path)


def test_anchor_takes_over_the_erased_latents_activation():
    sae = make_sae(d=16, n=64, k=4, seed=3)
    star, circle = 7, 9
    sae.set_reserved([star, circle])
    torch.manual_seed(0)
    x = torch.randn(10, 16) * 0.05 + 4 * sae.W_enc[star].detach() / sae.W_enc[star].detach().norm()
    acts = sae.pre_activations(x)[:, star]
    assert (acts > 0).all()
    t = ErasureTarget(torch.tensor([star]), torch.zeros(1), torch.ones(1), torch.zeros(1), torch.tensor([circle]))
    out = scale_neurons(x, sae, t)
    # multiplier 0: the star latent's decoded part goes, the circle latent's direction gains the same amount
    expected = x - acts[:, None] * sae.W_dec[star] + acts[:, None] * sae.W_dec[circle]
    assert torch.allclose(out, expected.detach(), atol=1e-5)
    no_anchor = scale_neurons(x, sae, ErasureTarget(t.latents, t.threshold, t.concept_mean, t.multiplier))
    assert torch.allclose(no_anchor, (x - acts[:, None] * sae.W_dec[star]).detach(), atol=1e-5)


def test_anchors_are_the_nearest_concept_of_the_same_kind():
    W = torch.zeros(6, 4)
    W[0] = torch.tensor([1.0, 0, 0, 0])        # star
    W[1] = torch.tensor([0.9, 0.1, 0, 0])      # cross: near star
    W[2] = torch.tensor([0, 1.0, 0, 0])        # heart
    W[3] = torch.tensor([0.95, 0, 0.05, 0])    # stripes: nearest to star of all, but a style
    W[4] = torch.tensor([0, 0, 1.0, 0])        # dots
    idx = supervised_index({"star": "object", "cross": "object", "heart": "object", "stripes": "style", "dots": "style"},
                           {"star": 0, "cross": 1, "heart": 2, "stripes": 3, "dots": 4})
    assign_anchors(idx, W)
    assert idx.get("star").anchor == "cross"
    assert idx.get("stripes").anchor == "dots"
    assert idx.get("cross").anchor == "star"
    assert idx.get("heart").anchor == "cross"  # star and cross anchor each other: heart takes its nearest anyway
    back = ConceptIndex.from_json(json.loads(json.dumps(idx.to_json())))
    assert back.get("star").anchor == "cross"


def test_no_concept_becomes_the_anchor_of_every_other():
    """A hub (one direction near all others) anchors at most one concept while others are free."""
    W = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    idx = supervised_index({"checker": "style", "solid": "style", "stripes": "style", "dots": "style"},
                           {"checker": 0, "solid": 1, "stripes": 2, "dots": 3})
    assign_anchors(idx, W)
    anchors = [idx.get(n).anchor for n in ("solid", "stripes", "dots")]
    assert anchors.count("checker") == 1 and all(a is not None for a in anchors)


def test_eraser_uses_the_index_anchor_unless_the_spec_names_another_or_none():
    sae = make_sae(d=16, n=64, k=4, seed=4)
    idx = supervised_index({"star": "object", "cross": "object", "heart": "object"}, {"star": 1, "cross": 2, "heart": 3})
    idx.get("star").anchor = "cross"
    sae.set_reserved([1, 2, 3])
    assert ConceptEraser(sae, idx, ["star"], mode="neuron").targets[0].anchors.tolist() == [2]
    assert ConceptEraser(sae, idx, ["star -> heart"], mode="neuron").targets[0].anchors.tolist() == [3]
    assert ConceptEraser(sae, idx, ["star ->"], mode="neuron").targets[0].anchors is None
    # erasing the anchor too: never hand one erased concept's activation to another, but to the
    # concept that stays (heart, the only one left)
    idx.get("cross").anchor = "star"
    both = ConceptEraser(sae, idx, ["star", "cross"], mode="neuron").targets[0]
    assert dict(zip(both.latents.tolist(), both.anchors.tolist())) == {1: 3, 2: 3}
    everything = ConceptEraser(sae, idx, ["star", "cross", "heart"], mode="neuron").targets[0]
    assert everything.anchors is None or (everything.anchors == -1).all()
    # an anchor the user names is taken as named, erased or not: no silent substitute
    named = ConceptEraser(sae, idx, ["star -> heart", "heart"], mode="neuron").targets[0]
    assert named.anchors is None or (named.anchors == -1).all()
    with pytest.raises(SAEError, match="anchor"):
        ConceptEraser(sae, idx, ["star -> star"], mode="neuron")
    assert split_anchor(" star  ->  heart ") == ("star", "heart") and split_anchor("star") == ("star", ...)


def test_context_sized_tokens_are_edited_per_row():
    """The text-state member edits [batch, tokens, width] tensors; rows it is not asked to edit stay."""
    sae = make_sae(d=16, n=64, k=4, seed=5)
    star = 7
    sae.set_reserved([star])
    idx = supervised_index({"star": "object"}, {"star": star})
    er = ConceptEraser(sae, idx, ["star"], mode="neuron", multiplier=0.0)
    ctx = torch.randn(2, 5, 16) * 0.05 + 4 * sae.W_enc[star].detach() / sae.W_enc[star].detach().norm()
    out = er(ctx, 0.0, torch.tensor([True, False]))
    assert not torch.allclose(out[0], ctx[0]) and torch.equal(out[1], ctx[1])


def test_anchor_with_mean_states_moves_tokens_by_the_difference_of_states_as_much_as_the_concept_is_there():
    sae = make_sae(d=16, n=64, k=4, seed=3)
    star, circle = 7, 9
    sae.set_reserved([star, circle])
    torch.manual_seed(0)
    direction = sae.W_enc[star].detach() / sae.W_enc[star].detach().norm()
    x = torch.cat([torch.randn(6, 16) * 0.05 + s * direction for s in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)[:6]])
    x = torch.cat([x, -4 * direction.view(1, -1)])  # a token where the star latent is silent
    acts = torch.nn.functional.relu(sae.pre_logits(x))[:, star].detach()
    assert (acts[:-1] > 0).all() and acts[-1] == 0
    mean = float(acts[2])
    shift = torch.randn(16)
    t = ErasureTarget(torch.tensor([star]), torch.zeros(1), torch.tensor([mean]), torch.zeros(1),
                      torch.tensor([circle]), shift.view(1, -1))
    out = scale_neurons(x, sae, t)
    share = (acts / mean).clamp(0, 2.0)  # capped where the latent fires far above its mean
    expected = x - acts[:, None] * sae.W_dec[star] + share[:, None] * shift
    assert torch.allclose(out, expected.detach(), atol=1e-4)
    assert torch.equal(out[-1], x[-1])  # no star there: untouched, no shift
    assert share.max() == 2.0 and share.min() == 0  # both ends of the cap are exercised


def test_text_states_move_to_the_anchor_as_a_whole_prompt_by_its_strongest_token():
    """In a wording the SAE never saw, the latent fires on the concept's word, weakly elsewhere;
    the model reads the concept from every token, so every token of that prompt moves, by the
    strongest token's share. A prompt without the concept moves nowhere."""
    sae = make_sae(d=16, n=64, k=4, seed=3)
    star, circle = 7, 9
    sae.set_reserved([star, circle])
    torch.manual_seed(0)
    direction = sae.W_enc[star].detach() / sae.W_enc[star].detach().norm()
    with_star = torch.randn(4, 16) * 0.05 + torch.tensor([0.0, 8.0, 0.0, 0.0]).view(-1, 1) * direction  # one strong token
    without = torch.randn(4, 16) * 0.05 - 4 * direction
    x = torch.cat([with_star, without])
    acts = torch.nn.functional.relu(sae.pre_logits(x))[:, star].detach()
    assert acts[1] > 0 and (acts[4:] == 0).all()
    mean = float(acts[1]) / 1.5
    shift = torch.randn(16)
    t = ErasureTarget(torch.tensor([star]), torch.zeros(1), torch.tensor([mean]), torch.zeros(1),
                      torch.tensor([circle]), shift.view(1, -1))
    out = scale_neurons(x, sae, t, positions_per_map=4)
    removed = x - acts[:, None] * sae.W_dec[star]
    assert torch.allclose(out[:4], (removed[:4] + 1.5 * shift).detach(), atol=1e-4)  # every token, by 1.5
    assert torch.equal(out[4:], x[4:])
    # per token (a block's positions), the silent tokens of the same prompt would not move
    per_token = scale_neurons(x, sae, t)
    assert torch.allclose(per_token[0], removed[0].detach() + (acts[0] / mean).clamp(0, 2) * shift, atol=1e-4)
    # the eraser judges per prompt only for an SAE on the text states
    idx = supervised_index({"star": "object", "circle": "object"}, {"star": star, "circle": circle})
    idx.get("star").anchor = "circle"
    idx.get("star").state, idx.get("circle").state = torch.zeros(1, 16), shift.view(1, -1)
    ctx = ConceptEraser(sae, idx, ["star"], mode="neuron", multiplier=0.0, per_prompt=True)(x.view(2, 4, 16), 0.0)
    share = float(acts[:4].max().clamp(0, 2))  # an index without selections: the concept's mean is 1
    assert torch.allclose(ctx.reshape(8, 16)[:4], (removed[:4] + share * shift).detach(), atol=1e-4)
    assert torch.equal(ctx.reshape(8, 16)[4:], x[4:])


def test_eraser_builds_the_anchor_shift_from_the_index_states_per_timestep_bucket():
    sae = make_sae(d=8, n=32, k=4)
    idx = supervised_index({"star": "object", "cross": "object", "heart": "object"}, {"star": 1, "cross": 2, "heart": 3})
    idx.timesteps = [900.0, 100.0]
    states = {n: torch.randn(2, 8) for n in ("star", "cross")}
    for n, s in states.items():
        idx.get(n).state = s
    idx.get("star").anchor = "cross"
    eraser = ConceptEraser(sae, idx, ["star"], mode="neuron")
    for b in range(2):
        assert torch.allclose(eraser.targets[b].shifts[0], states["cross"][b] - states["star"][b])
    # an anchor without a state (heart): the decoder direction is used, no shift row
    assert ConceptEraser(sae, idx, ["star -> heart"], mode="neuron").targets[0].shifts is None


def test_concept_states_survive_save_and_load_and_a_wrong_shape_is_a_clear_error(tmp_path):
    sae = make_sae(d=8, n=32, k=4)
    idx = supervised_index({"star": "object", "cross": "object"}, {"star": 1, "cross": 2})
    idx.get("star").state, idx.get("cross").state = torch.randn(1, 8), torch.randn(1, 8)
    path = str(tmp_path / "states.safetensors")
    save_sae(path, sae, SAEInfo(CONTEXT, "demo", idx))
    back = load_sae(path).index
    assert torch.equal(back.get("star").state, idx.get("star").state)
    assert torch.equal(back.get("cross").state, idx.get("cross").state)
    tensors = load_file(path)
    tensors["concept_states"] = torch.randn(2, 1, 5)
    save_file(tensors, path, metadata=load_file_meta(path))
    with pytest.raises(SAEFileError, match="concept_states"):
        load_sae(path)
    tensors["concept_states"] = torch.full((2, 1, 8), float("nan"))
    save_file(tensors, path, metadata=load_file_meta(path))
    with pytest.raises(SAEFileError, match="NaN"):
        load_sae(path)


def test_concept_statistics_keep_each_concepts_mean_input_per_bucket():
    from saemnesia_core.concepts import ConceptStats
    stats = ConceptStats(6, {"star": "object", "dots": "style"}, [900.0, 100.0])
    x = torch.arange(5 * 3, dtype=torch.float32).view(5, 3)
    labels = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0], [0, 0]])
    ts = torch.tensor([900.0, 900.0, 900.0, 100.0, 100.0])
    stats.add(torch.ones(5, 2), torch.zeros(5, 2, dtype=torch.long), ts, labels, inputs=x)
    states = stats.states()
    assert torch.allclose(states[0, 0], x[[0, 1]].mean(0)) and torch.allclose(states[0, 1], x[[1, 2]].mean(0))
    assert torch.allclose(states[1, 0], x[3])
