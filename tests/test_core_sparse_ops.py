import pytest
import torch

from saemnesia_core import sparse_ops
from saemnesia_core.sae import TopKSAE


def dense_reference(sae, x, k_total):
    pre = sae.pre_activations(x)
    flat = pre.flatten()
    vals, idx = flat.topk(k_total, sorted=False)
    z = torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)
    return z @ sae.W_dec + sae.b_dec


def test_sparse_training_path_matches_dense_values_and_gradients():
    torch.manual_seed(0)
    sae = TopKSAE(24, 96, 4)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    x = torch.randn(50, 24)

    ref = dense_reference(sae, x, 4 * 50)
    loss_ref = (x - ref).pow(2).sum()
    grads_ref = torch.autograd.grad(loss_ref, list(sae.parameters()))

    xc = x - sae.b_dec
    with torch.no_grad():
        pre = torch.relu(torch.nn.functional.linear(xc, sae.W_enc, sae.b_enc))
    rows, cols = sparse_ops.select(pre, k_total=4 * 50)
    vals = sparse_ops.selected_values(xc, sae.W_enc, sae.b_enc, pre, rows, cols)
    out = sparse_ops.sparse_decode(rows, cols, vals, sae.W_dec, 50) + sae.b_dec
    loss = (x - out).pow(2).sum()
    grads = torch.autograd.grad(loss, list(sae.parameters()))

    assert torch.allclose(out, ref, atol=1e-5)
    for (name, _), g, gr in zip(sae.named_parameters(), grads, grads_ref):
        assert torch.allclose(g, gr, atol=1e-4, rtol=1e-4), name


def test_per_row_selection_and_mask():
    pre = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 0.5, 4.0]])
    rows, cols = sparse_ops.select(pre, k_per_row=2)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 3)]
    rows, cols = sparse_ops.select(pre, k_per_row=2, mask=torch.tensor([True, False, True, True]))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 2), (0, 3), (1, 0), (1, 3)]
    rows, cols = sparse_ops.select(pre, k_total=3)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0), (1, 3)]


def test_batch_topk_is_exact_and_grouped_by_row():
    """The thresholded BatchTopK returns exactly the k_total largest positive entries,
    also when few entries are positive or the sampled threshold is off."""
    g = torch.Generator().manual_seed(0)
    for rows_n, n, k_total, shift in [(256, 4096, 8192, 0.0), (50, 96, 200, 0.0), (64, 1024, 2048, -3.0),
                                       (7, 33, 40, 0.5), (3, 5, 100, 0.0), (128, 512, 4096, -1.0)]:
        for _ in range(3):
            pre = torch.randn(rows_n, n, generator=g) + shift + torch.randn(rows_n, 1, generator=g)
            rows, cols = sparse_ops.select(pre, k_total=k_total)
            flat = pre.flatten()
            ref = flat.topk(min(k_total, flat.numel())).indices
            ref = ref[flat[ref] > 0].sort().values
            assert torch.equal(rows * n + cols, ref), (rows_n, n, k_total, shift)
            assert bool((rows[1:] >= rows[:-1]).all())


def test_per_row_path_gradients_and_ungrouped_triplets_are_refused():
    torch.manual_seed(1)
    sae = TopKSAE(16, 64, 3)
    x = torch.randn(20, 16)
    xc = x - sae.b_dec
    with torch.no_grad():
        pre = torch.nn.functional.linear(xc, sae.W_enc, sae.b_enc)
    rows, cols = sparse_ops.select(pre, k_per_row=3)
    out = sparse_ops.sparse_decode(rows, cols, sparse_ops.selected_values(xc, sae.W_enc, sae.b_enc, pre, rows, cols),
                                   sae.W_dec, 20) + sae.b_dec
    grads = torch.autograd.grad((x - out).pow(2).sum(), list(sae.parameters()))
    ref = sae(x)  # per-token TopK, dense autograd
    grads_ref = torch.autograd.grad((x - ref).pow(2).sum(), list(sae.parameters()))
    assert torch.allclose(out, ref, atol=1e-5)
    for (name, _), a, b in zip(sae.named_parameters(), grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    with pytest.raises(ValueError, match="grouped by row"):
        sparse_ops.sparse_decode(rows.flip(0), cols.flip(0), torch.ones(rows.numel()), sae.W_dec, 20)
