"""Training kernels that touch only the active latents.

A TopK SAE step written densely costs three [batch x n_latents x d_in] products beyond
the encoder's forward (dense decode, and the backward of both matrices). Here the
encoder's forward stays dense (it must score every latent), but the selected values, the
decode and all gradients are computed from the (row, latent, value) triplets of the
selection: k values per token instead of n_latents.

Every product over the triplets is an `embedding_bag` (a weighted sum of gathered rows,
one bag per output row): grouped by token it decodes and gives the encoder's input
gradient, grouped by latent the encoder's weight gradient; the decoder's gradients are
embedding_bag's own backward. No [triplets, d_in] temporary is built.
`select` returns the triplets grouped by row (ascending), which these kernels rely on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _offsets(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Start of each group's run in a tensor sorted by group (empty groups allowed)."""
    counts = torch.bincount(groups, minlength=n_groups)
    return counts.cumsum(0) - counts


def _check_grouped(rows: torch.Tensor):
    if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
        raise ValueError("sparse_ops: triplets must be grouped by row (ascending), as select() returns them")


def _bag_sum(index, weights, table, offsets):
    """out[b] = sum over the bag's i of weights[i] * table[index[i]]."""
    return F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weights)


def _by_column(cols, n_cols):
    """Permutation grouping the triplets by latent, and the bag offsets for it."""
    order = torch.argsort(cols, stable=True)
    return order, _offsets(cols, n_cols)


class _SelectedValues(torch.autograd.Function):
    """vals[i] = relu(xc[rows[i]] . W_enc[cols[i]] + b_enc[cols[i]]), with the values
    already computed in forward (they are entries of the dense scores)."""

    @staticmethod
    def forward(ctx, xc, W_enc, b_enc, rows, cols, vals):
        ctx.save_for_backward(xc, W_enc, rows, cols, vals)
        return vals.clone()

    @staticmethod
    def backward(ctx, g):
        xc, W_enc, rows, cols, vals = ctx.saved_tensors
        g = g * (vals > 0)  # ReLU
        d_xc = d_W = d_b = None
        if ctx.needs_input_grad[0]:
            d_xc = _bag_sum(cols, g, W_enc, _offsets(rows, xc.shape[0]))
        if ctx.needs_input_grad[1]:
            order, offs = _by_column(cols, W_enc.shape[0])
            d_W = _bag_sum(rows[order], g[order], xc, offs)
        if ctx.needs_input_grad[2]:
            d_b = g.new_zeros(W_enc.shape[0]).index_add_(0, cols, g)
        return d_xc, d_W, d_b, None, None, None


def select(pre: torch.Tensor, k_total: int | None = None, k_per_row: int | None = None,
           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the chosen positive entries of pre [B, n] (no grad), grouped by row
    in ascending order: BatchTopK with k_total over the whole batch, or per-row TopK with
    k_per_row; `mask` [n] limits the candidates."""
    with torch.no_grad():
        p = pre if mask is None else pre.masked_fill(~mask.view(1, -1), float("-inf"))
        B, n = p.shape
        if k_total is not None:
            rows, cols = _batch_topk(p, min(k_total, p.numel()))
        else:
            cols = p.topk(k_per_row, dim=-1, sorted=False).indices.flatten()
            rows = torch.arange(B, device=p.device).repeat_interleave(k_per_row)
        keep = p[rows, cols] > 0
        return rows[keep], cols[keep]


def _batch_topk(p: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k_total largest positive entries of p, as row-sorted (rows, cols).

    Exact, without a top-k over the whole matrix: a threshold below the k_total-th value is
    estimated from a strided sample (aiming at about twice k_total entries above it), the
    entries above it are gathered, and the top k_total is taken among those. If the
    estimate was too high (fewer than k_total above it) the whole matrix is searched.
    """
    B, n = p.shape
    flat = p.reshape(-1)
    stride = max(1, min(64, k_total // 256)) | 1
    while math.gcd(stride, n) != 1:  # a stride sharing a factor with n would sample only some latents
        stride += 2
    sample = flat[::stride]
    take = min(sample.numel(), 2 * -(-k_total // stride) + 1)
    t = max(0.0, float(sample.topk(take, sorted=False).values.min()))
    cand = torch.nonzero(flat > t).squeeze(1)
    if cand.numel() > k_total:
        idx = cand[flat[cand].topk(k_total, sorted=False).indices]
    elif cand.numel() == k_total or t == 0.0:
        idx = cand  # exactly k_total above t, or fewer than k_total positive entries at all
    else:
        idx = flat.topk(k_total, sorted=False).indices
    idx = idx.sort().values
    return torch.div(idx, n, rounding_mode="floor"), idx % n


def selected_values(xc, W_enc, b_enc, pre, rows, cols):
    _check_grouped(rows)
    return _SelectedValues.apply(xc, W_enc, b_enc, rows, cols, pre[rows, cols])


def sparse_decode(rows, cols, vals, W_dec, n_rows):
    """out[r] = sum of vals[i] * W_dec[cols[i]] over row r's triplets. Plain autograd: torch's
    embedding_bag backward already gives one dot product per value and a row-wise weight grad."""
    _check_grouped(rows)
    return _bag_sum(cols, vals, W_dec, _offsets(rows, n_rows))


def with_columns(pre: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, columns: torch.Tensor):
    """Add the positive entries of pre's `columns` to a selection, keeping it grouped by row."""
    with torch.no_grad():
        if columns.numel() == 0:
            return rows, cols
        r, c = (pre[:, columns] > 0).nonzero(as_tuple=True)
        rows, cols = torch.cat([rows, r]), torch.cat([cols, columns[c]])
        order = torch.argsort(rows, stable=True)
        return rows[order], cols[order]
