"""TopK sparse autoencoder (SAeUron / OpenAI TopK recipe).

pre = ReLU(W_enc (x - b_dec) + b_enc); keep the k largest; x_hat = z W_dec + b_dec.
Decoder rows are kept at unit norm. Inference keeps the top k per token; training can
use BatchTopK (top k*batch over the whole batch), which lets busy tokens use more latents.

A supervised (SAEmnesia) SAE can *reserve* its concept latents: they are kept out of the
TopK competition and decoded wherever they are positive. A concept's evidence at one
position is often weak next to the generic features that win the k slots, so a competing
concept latent would be decoded rarely, its decoder row would stay untrained, and scaling
it would change nothing; reserved, it carries the concept wherever the probe sees it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SparseCode:
    """Top-k latents per token: values and latent indices, both [tokens, k]."""

    values: torch.Tensor
    indices: torch.Tensor


class TopKSAE(nn.Module):
    def __init__(self, d_in: int, n_latents: int, k: int, dtype=torch.float32, device=None):
        super().__init__()
        if not (0 < k <= n_latents):
            raise ValueError(f"k must be in 1..n_latents ({n_latents}), got {k}")
        self.d_in, self.n_latents, self.k = int(d_in), int(n_latents), int(k)
        self.W_enc = nn.Parameter(torch.empty(n_latents, d_in, dtype=dtype, device=device))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_in, dtype=dtype, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype, device=device))
        self.register_buffer("reserved", torch.zeros(0, dtype=torch.long, device=device), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None):
        w = torch.randn(self.n_latents, self.d_in, generator=generator, dtype=torch.float32)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w.to(self.W_dec))
        # Encoder starts as the decoder's transpose: every latent first reads its own direction.
        self.W_enc.copy_(w.to(self.W_enc))
        self.b_enc.zero_()
        self.b_dec.zero_()

    @classmethod
    def from_tensors(cls, W_enc, b_enc, W_dec, b_dec, k: int, trainable: bool = False) -> "TopKSAE":
        """Wrap existing weights (no random init, no copy when they already fit)."""
        sae = cls.__new__(cls)
        nn.Module.__init__(sae)
        sae.n_latents, sae.d_in = W_dec.shape
        sae.k = int(k)
        for name, t in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            setattr(sae, name, nn.Parameter(t, requires_grad=trainable))
        sae.register_buffer("reserved", torch.zeros(0, dtype=torch.long, device=W_dec.device), persistent=False)
        return sae

    def set_reserved(self, latents) -> "TopKSAE":
        """Keep these latents out of the TopK competition (see the module docstring)."""
        r = torch.as_tensor(sorted({int(i) for i in latents}), dtype=torch.long)
        if r.numel() and not (0 <= int(r.min()) and int(r.max()) < self.n_latents):
            raise ValueError(f"reserved latents must be in 0..{self.n_latents - 1}, got {r.tolist()}")
        if r.numel() > self.n_latents - self.k:
            raise ValueError(f"{r.numel()} reserved latents leave fewer than k={self.k} to compete")
        self.reserved = r.to(self.W_dec.device)
        return self

    def competing(self, pre: torch.Tensor) -> torch.Tensor:
        """Scores that compete for the k slots: the reserved latents' set to 0."""
        if self.reserved.numel() == 0:
            return pre
        return pre.index_fill(-1, self.reserved, 0.0)

    def is_reserved(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.isin(latents, self.reserved.to(latents.device))

    # --- encoding -------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU pre-activations of all latents, [tokens, n_latents]."""
        return F.relu(self.pre_logits(x))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Affine encoder output before the ReLU (the supervised loss reads these as logits)."""
        return F.linear(x - self.b_dec, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> SparseCode:
        """Per-token TopK (inference), plus the reserved latents ([tokens, k + reserved])."""
        pre = self.pre_activations(x)
        values, indices = self.competing(pre).topk(self.k, dim=-1, sorted=False)
        if self.reserved.numel():
            values = torch.cat([values, pre[:, self.reserved]], 1)
            indices = torch.cat([indices, self.reserved.expand(pre.shape[0], -1)], 1)
        return SparseCode(values, indices)

    def latent_activations(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Activations of chosen latents under per-token TopK, [tokens, len(latents)].

        A latent outside a token's top k is 0 there, exactly as in `encode`.
        """
        code = self.encode(x)
        hit = code.indices.unsqueeze(-1) == latents.view(1, 1, -1)  # [T, k, L]
        return (code.values.unsqueeze(-1) * hit).sum(1)

    # --- decoding -------------------------------------------------------------------
    def decode(self, code: SparseCode) -> torch.Tensor:
        # Only the k active rows are read per token: cost T*k*d, not T*n*d.
        out = F.embedding_bag(code.indices, self.W_dec, per_sample_weights=code.values, mode="sum")
        return out + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction x_hat (no error term)."""
        return self.decode(self.encode(x))

    # --- training helpers -----------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self):
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self):
        """Drop the gradient component along each (unit) decoder row, so Adam steps
        do not fight the renormalisation."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    def extra_repr(self):
        return f"d_in={self.d_in}, n_latents={self.n_latents}, k={self.k}"


def geometric_median(points: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld iteration; the SAeUron/OpenAI recipe initialises b_dec with it."""
    y = points.mean(0)
    for _ in range(iters):
        d = (points - y).norm(dim=1).clamp_min(eps)
        w = 1.0 / d
        y_new = (points * w.unsqueeze(1)).sum(0) / w.sum()
        if (y_new - y).norm() < eps * (1 + y.norm()):
            return y_new
        y = y_new
    return y
