"""The pooled text vector's shift (saemnesia_core.intervention: pooled_record, PooledShift), in pure torch."""
import torch

from saemnesia_core import ConceptEraser, TopKSAE
from saemnesia_core.concepts import Concept, ConceptIndex, Selection
from saemnesia_core.intervention import PooledShift, pooled_record
from saemnesia_core.prompts import LabelledPrompt


def test_pooled_record_is_the_mean_without_minus_the_mean_with():
    prompts = [LabelledPrompt("a cat", {"cat": "object"}), LabelledPrompt("a dog", {"dog": "object"}),
               LabelledPrompt("a cat, ink", {"cat": "object", "ink": "style"}), LabelledPrompt("", {})]
    pooled = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    record = pooled_record(prompts, pooled)
    assert record["width"] == 2
    assert record["concepts"]["cat"] == [-2.0, 0.5]  # mean of (dog, "") minus mean of the two cats
    assert torch.allclose(torch.tensor(record["concepts"]["ink"]), torch.tensor([1 / 3 - 3.0, 1 / 3]), atol=1e-4)


def _eraser():
    """A text SAE whose concept 'cat' (latent 2) fires only on one token position's state."""
    sae = TopKSAE(4, 8, 2)
    sae.requires_grad_(False)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[2, 0] = 1.0  # latent 2 reads channel 0
        sae.b_enc.fill_(-0.5)
    index = ConceptIndex(timesteps=[500.0], default_mode="neuron",
                         concepts={"cat": Concept("cat", "object", 2, [Selection([2], [1.0], [1.0], [0.0])])})
    return ConceptEraser(sae, index, ["cat"], mode="neuron", strength=0.5, multiplier=-1.0, per_prompt=True)


def test_pooled_shift_moves_only_the_prompts_that_carry_the_concept():
    eraser = _eraser()
    shift = PooledShift.from_record({"concepts": {"cat": [1.0, -1.0], "dog": [9.0, 9.0]}}, eraser)
    assert set(shift.shifts) == {"cat"}  # only erased concepts
    states = torch.zeros(3, 5, 4)
    states[0, 2, 0] = 2.0  # prompt 0 names the cat (one token fires); prompts 1, 2 do not
    states[2, 1, 0] = 0.2  # below the latent's bias: silent
    y = torch.arange(3 * 6, dtype=torch.float32).view(3, 6)
    out = shift(states, y, 500.0)
    assert torch.equal(out[0, :2], y[0, :2] + 0.5 * torch.tensor([1.0, -1.0]))  # strength x the shift
    assert torch.equal(out[0, 2:], y[0, 2:]) and torch.equal(out[1:], y[1:])
    assert shift(states, y, 500.0, rows=torch.tensor([False, True, True])) is y  # cond only: row 0 left out
    assert PooledShift.from_record({"concepts": {"dog": [1.0]}}, eraser) is None
