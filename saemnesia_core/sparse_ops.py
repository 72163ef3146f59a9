"""Training kernels that touch only the active latents.

A TopK SAE step written densely costs three [batch x n_latents x d_in] products beyond
the encoder's forward (dense decode, and the backward of both matrices). Here the
encoder's forward stays dense (it must score every latent), but the selected values, the
decode and all gradients are computed from the (row, latent, value) triplets of the
selection: k values per token instead of n_latents.
"""
from __future__ import annotations

import torch

_CHUNK = 16384  # triplets per gather: bounds the [chunk, d_in] temporaries


class _SelectedValues(torch.autograd.Function):
    """vals[i] = relu(xc[rows[i]] . W_enc[cols[i]] + b_enc[cols[i]]), with the values
    already computed in forward; backward builds the sparse gradient matrix once."""

    @staticmethod
    def forward(ctx, xc, W_enc, b_enc, rows, cols, vals):
        ctx.save_for_backward(xc, W_enc, rows, cols, vals)
        return vals.clone()

    @staticmethod
    def backward(ctx, g):
        xc, W_enc, rows, cols, vals = ctx.saved_tensors
        g = g * (vals > 0)  # ReLU
        G = torch.sparse_coo_tensor(torch.stack([rows, cols]), g, (xc.shape[0], W_enc.shape[0]), check_invariants=False).coalesce()
        d_xc = torch.sparse.mm(G, W_enc) if ctx.needs_input_grad[0] else None
        d_W = torch.sparse.mm(G.t(), xc) if ctx.needs_input_grad[1] else None
        d_b = vals.new_zeros(W_enc.shape[0]).index_add_(0, cols, g) if ctx.needs_input_grad[2] else None
        return d_xc, d_W, d_b, None, None, None


class _SparseDecode(torch.autograd.Function):
    """out[r] = sum_i vals[i] * W_dec[cols[i]] over the triplets of row r."""

    @staticmethod
    def forward(ctx, rows, cols, vals, W_dec, n_rows):
        ctx.save_for_backward(rows, cols, vals, W_dec)
        S = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n_rows, W_dec.shape[0]), check_invariants=False)
        return torch.sparse.mm(S, W_dec)

    @staticmethod
    def backward(ctx, g):
        rows, cols, vals, W_dec = ctx.saved_tensors
        d_vals = None
        if ctx.needs_input_grad[2]:
            d_vals = torch.empty_like(vals)
            for a in range(0, vals.numel(), _CHUNK):
                b = a + _CHUNK
                d_vals[a:b] = (g[rows[a:b]] * W_dec[cols[a:b]]).sum(-1)
        d_W = None
        if ctx.needs_input_grad[3]:
            St = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (W_dec.shape[0], g.shape[0]), check_invariants=False)
            d_W = torch.sparse.mm(St, g)
        return None, None, d_vals, d_W, None


def select(pre: torch.Tensor, k_total: int | None = None, k_per_row: int | None = None,
           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the chosen entries of pre [B, n] (no grad): BatchTopK with k_total
    over the whole batch, or per-row TopK with k_per_row; `mask` [n] limits the candidates."""
    with torch.no_grad():
        p = pre if mask is None else pre.masked_fill(~mask.view(1, -1), float("-inf"))
        if k_total is not None:
            idx = p.flatten().topk(min(k_total, p.numel()), sorted=False).indices
            rows, cols = idx // p.shape[1], idx % p.shape[1]
        else:
            cols = p.topk(k_per_row, dim=-1, sorted=False).indices.flatten()
            rows = torch.arange(p.shape[0], device=p.device).repeat_interleave(k_per_row)
        keep = p[rows, cols] > 0
        return rows[keep], cols[keep]


def selected_values(xc, W_enc, b_enc, pre, rows, cols):
    return _SelectedValues.apply(xc, W_enc, b_enc, rows, cols, pre[rows, cols])


def sparse_decode(rows, cols, vals, W_dec, n_rows):
    return _SparseDecode.apply(rows, cols, vals, W_dec, n_rows)
