"""Handover maps: a text-state SAE's concept moves each token to what the prompt naming the anchor gives."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_core_sae import make_sae
from test_core_sets_and_anchors import load_file_meta, supervised_index

from saemnesia_core import ConceptEraser, SAEFileError, SAEInfo, load_sae, save_sae
from saemnesia_core.checkpoint import CONTEXT
from saemnesia_core.erasure import ErasureTarget, scale_neurons
from saemnesia_core.handover import align_twins, fit_concept_handovers, fit_handover, twin_text
from saemnesia_core.prompts import LabelledPrompt


def test_twin_text_swaps_whole_words_only():
    assert twin_text("a Star in dots style", "star", "heart") == "a heart in dots style"
    assert twin_text("a starfish, star-shaped", "star", "heart") is None  # parts of words are other words
    assert twin_text("star, star", "star", "cross") == "cross, cross"
    assert twin_text("a ring with speckles", "circle", "square") is None  # a synonym line has no twin


def test_twins_pair_tokens_around_a_word_of_another_length():
    # [CLS] a star in dots style [SEP] pad pad  vs  [CLS] a check ##er in dots style [SEP] pad
    p = [101, 1, 50, 2, 3, 4, 102, 0, 0]
    t = [101, 1, 60, 61, 2, 3, 4, 102, 0]
    al = align_twins(p, t).tolist()
    assert al[:3] == [0, 1, 2]  # before the word, and the word to the first token of the twin's
    assert al[3:7] == [4, 5, 6, 7]  # after it: shifted by one
    assert al[7] == 8 and al[8] == -1  # padding too; the last pad has no partner
    assert align_twins(p, p).tolist() == list(range(9))
    with pytest.raises(ValueError, match="lengths"):
        align_twins(p, t[:-1])


def test_fit_recovers_an_affine_move():
    torch.manual_seed(0)
    a, b = torch.randn(8, 8) * 0.3, torch.randn(8)
    xs = [torch.randn(6, 8) for _ in range(20)]
    ys = [x + x @ a + b for x in xs]
    m = fit_handover(xs, ys, [torch.arange(6)] * 20, ridge=1e-8)
    assert torch.allclose(m[:8], a, atol=1e-4) and torch.allclose(m[8], b, atol=1e-4)


def _star_sae():
    sae = make_sae(d=16, n=64, k=4, seed=3)
    star, heart = 7, 9
    sae.set_reserved([star, heart])
    direction = sae.W_enc[star].detach() / sae.W_enc[star].detach().norm()
    return sae, star, heart, direction


def test_a_prompt_with_the_concept_moves_by_the_map_and_one_without_stays_bit_identical():
    sae, star, heart, direction = _star_sae()
    torch.manual_seed(0)
    with_star = torch.randn(4, 16) * 0.05 + torch.tensor([0.0, 6.0, 0.0, 0.0]).view(-1, 1) * direction
    without = torch.randn(4, 16) * 0.05 - 4 * direction
    x = torch.cat([with_star, without])
    acts = torch.nn.functional.relu(sae.pre_logits(x))[:, star].detach()
    assert acts[1] > 0 and (acts[4:] == 0).all()
    # a map that carries every token well past where the star latent is silent
    move = torch.zeros(17, 16)
    move[16] = -12 * direction
    mean = float(acts[1]) * 2  # the strongest token holds half the concept's mean: gate 0.5
    t = ErasureTarget(torch.tensor([star]), torch.zeros(1), torch.tensor([mean]), torch.full((1,), -3.0),
                      torch.tensor([heart]), maps=move.unsqueeze(0))
    out = scale_neurons(x, sae, t, positions_per_map=4)
    assert torch.allclose(out[:4], x[:4] + 0.5 * move[16], atol=1e-5)  # every token of the prompt, no latent scaling
    assert torch.equal(out[4:], x[4:])
    # where the latent still fires after the move (a wording the map was not fitted on), it is erased as before
    weak = ErasureTarget(t.latents, t.threshold, t.concept_mean, t.multiplier, t.anchors,
                         maps=(move * 0.01).unsqueeze(0))
    after_move = x[:4] + 0.5 * 0.01 * move[16]
    rest = torch.nn.functional.relu(sae.pre_logits(after_move))[:, star].detach()
    assert rest.max() > 0
    expected = after_move - 4.0 * rest[:, None] * sae.W_dec[star].detach()
    expected += (rest[:, None] * sae.W_dec[heart].detach())  # no states: the anchor's decoder direction
    assert torch.allclose(scale_neurons(x, sae, weak, positions_per_map=4)[:4], expected, atol=1e-4)


def test_the_eraser_uses_a_map_only_for_the_anchor_it_was_fitted_to():
    sae = make_sae(d=8, n=32, k=4)
    idx = supervised_index({"star": "object", "heart": "object", "cross": "object"}, {"star": 1, "heart": 2, "cross": 3})
    star = idx.get("star")
    star.anchor, star.handover, star.handover_anchor = "heart", torch.randn(9, 8), "heart"
    idx.get("heart").anchor = "star"
    own = ConceptEraser(sae, idx, ["star"], mode="neuron").targets[0]
    assert torch.equal(own.maps[0], star.handover) and own.mapped.tolist() == [True]
    assert ConceptEraser(sae, idx, ["star -> cross"], mode="neuron").targets[0].maps is None
    # erased with its anchor: it hands over to the nearest that stays, for which it has no map
    both = ConceptEraser(sae, idx, ["star", "heart"], mode="neuron").targets[0]
    assert both.maps is None


def test_maps_survive_save_and_load_and_damage_is_a_clear_error(tmp_path):
    sae = make_sae(d=8, n=32, k=4)
    idx = supervised_index({"star": "object", "heart": "object"}, {"star": 1, "heart": 2})
    idx.get("star").anchor, idx.get("star").handover, idx.get("star").handover_anchor = "heart", torch.randn(9, 8), "heart"
    path = str(tmp_path / "maps.safetensors")
    save_sae(path, sae, SAEInfo(CONTEXT, "demo", idx))
    back = load_sae(path).index
    assert back.get("star").handover_anchor == "heart" and back.get("heart").handover is None
    assert torch.allclose(back.get("star").handover, idx.get("star").handover, atol=2e-3)  # stored in fp16
    tensors = load_file(path)
    for bad, match in ((torch.randn(1, 8, 8), "expected"), (torch.full((1, 9, 8), float("inf")), "NaN or inf")):
        tensors["concept_handovers"] = bad
        save_file(tensors, path, metadata=load_file_meta(path))
        with pytest.raises(SAEFileError, match=match):
            load_sae(path)


def test_each_anchored_concept_gets_a_map_from_its_named_prompts():
    """A toy encoder whose token states are fixed vectors per word: the fitted star map turns the
    states of 'a star in X style' into those of 'a heart in X style'."""
    torch.manual_seed(0)
    vocab: dict[str, int] = {}
    table = torch.randn(64, 16)

    def encode(texts):
        out = []
        for text in texts:
            ids = [vocab.setdefault(w, len(vocab) + 1) for w in text.replace(",", " ,").split()][:10]
            ids += [0] * (10 - len(ids))
            out.append((ids, table[torch.tensor(ids)]))
        return out
    idx = supervised_index({"star": "object", "heart": "object", "dots": "style"}, {"star": 1, "heart": 2, "dots": 3})
    idx.get("star").anchor, idx.get("heart").anchor = "heart", "star"
    styles = ["dots", "stripes", "solid", "checker", "outline", "gradient", "plain", "wavy"]
    prompts = [LabelledPrompt(f"a {o} in {s} style", {o: "object"}) for o in ("star", "heart") for s in styles]
    prompts.append(LabelledPrompt("a pentagram in dots style", {"star": "object"}))  # no twin: skipped
    skipped = fit_concept_handovers(idx, prompts, encode)
    assert skipped == {} and idx.get("dots").handover is None  # no anchor, no map
    m = idx.get("star").handover
    (ids, x), = encode(["a star in dots style"])
    (_, y), = encode(["a heart in dots style"])
    moved = x + torch.cat([x, torch.ones(10, 1)], 1) @ m
    assert (moved - y).norm() < 0.2 * (x - y).norm()
    idx.get("dots").anchor = "star"
    assert "names it" in fit_concept_handovers(idx, prompts, encode)["dots"]
