"""Attention Residuals: uniform weights at init, block size one is the full form, its budget, and
the switches it refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
import torch.nn.functional as F
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import AttentionResiduals, Vanilla
from lit_vattn.model.memory import DepthMemory

SETTINGS = {"attnres-block": lambda: AttentionResiduals(block_size=2)}


def test_start_uniform_and_block_size_one_is_full():
    net = tiny_gpt(AttentionResiduals)
    net.arch.record_maps = True
    x = torch.randint(0, V, (2, 16))
    full = net(x)
    w = net.arch.depth_map()["weights"].values
    for k in range(2 * L + 1):  # sub-layer k reads x0 and the k outputs before it, uniformly
        torch.testing.assert_close(w[k, : k + 1], torch.full((k + 1,), 1.0 / (k + 1)))
        assert w[k, k + 1 :].abs().sum() == 0
    torch.testing.assert_close(tiny_gpt(lambda: AttentionResiduals(block_size=1))(x), full)


def test_block_form_is_not_vanilla_at_init():
    x = torch.randint(0, V, (2, 16))
    assert not torch.allclose(tiny_gpt(SETTINGS["attnres-block"])(x), tiny_gpt(Vanilla)(x), atol=1e-3)


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    for make in (AttentionResiduals, SETTINGS["attnres-block"]):
        assert tiny_gpt(make).num_params() - base.num_params() == 2 * D * (2 * L + 1)
    assert tiny_gpt(AttentionResiduals).flops_per_token(T) > base.flops_per_token(T)


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"AttentionResiduals.block_size=0 must be >= 1"):
        tiny_gpt(lambda: AttentionResiduals(block_size=0))


def _naive_attention_residual(pseudo_query, values, eps):
    """flash-attn-res 0.1.12, ``flash_attn_res/experimental/torch.py``: ``naive_attention_residual``,
    transcribed without its ``torch.compile`` (CUDA autotuning) and final dtype cast; the package
    imports Triton and its ops run on a GPU only, so it is read rather than installed."""
    keys = F.rms_norm(values, (values.shape[-1],), eps=eps)
    logits = torch.einsum("d, n b t d -> n b t", pseudo_query, keys)
    logits = logits - logits.max(dim=0, keepdim=True).values
    return torch.einsum("n b t, n b t d -> b t d", logits.softmax(0), values)


def _paper_forward(inputs, pseudo_queries, layers, block_size, eps):
    """The same file's ``paper_forward`` (its BLOCK_SIZE a parameter here): layer i's output starts a
    new block when i % block_size == 0, else it is added to the latest block; every block so far,
    the partial one included, is a source; one more pseudo-query reads the output."""
    blocks, seen = [inputs], []
    for i in range(len(layers)):
        h = _naive_attention_residual(pseudo_queries[i], torch.stack(blocks, dim=0), eps)
        seen.append(h)
        update = layers[i](h)
        if i % block_size == 0:
            blocks.append(update)
        else:
            blocks[-1] = blocks[-1] + update
    return seen, _naive_attention_residual(pseudo_queries[-1], torch.stack(blocks, dim=0), eps)


@pytest.mark.parametrize("block_size", [None, 2, 3])
def test_full_and_block_equal_flash_attn_res_paper_forward_with_gradients(block_size):
    """Every sub-layer's mixture and the readout equal the reference's, and so do the pseudo-queries'
    gradients; weights mapped query[k] -> pseudo_queries[k] (our RMSNorm gains at their init, 1: the
    reference has none; the model's norm_eps set to its EPS, float32's machine eps)."""
    eps = torch.finfo(torch.float32).eps
    net = tiny_gpt(lambda: AttentionResiduals(block_size=block_size), norm_eps=eps)
    arch = net.arch
    gen = torch.Generator().manual_seed(15)
    with torch.no_grad():
        arch.query.normal_(0, 1, generator=gen)
    maps = [torch.randn(D, D, generator=gen) / D**0.5 for _ in range(2 * L)]
    layers = [lambda h, M=M: torch.tanh(h @ M) for M in maps]
    x0 = torch.randn(2, 5, D, generator=gen)

    queries = arch.query.detach().clone().requires_grad_()
    want_seen, want = _paper_forward(x0, queries, layers, block_size or 1, eps)

    mem = DepthMemory(x0=x0)
    got_seen = []
    for i in range(2 * L):
        l, s = divmod(i, 2)
        h = arch.inputs(l, ("attn", "mlp")[s], None, mem)
        got_seen.append(h)
        arch.update(l, ("attn", "mlp")[s], None, layers[i](h), mem)
    got = arch.readout(None, mem)
    for a, b in zip(got_seen, want_seen):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    w = torch.randn(got.shape, generator=gen)
    (want * w).sum().backward()
    (got * w).sum().backward()
    torch.testing.assert_close(arch.query.grad, queries.grad, atol=1e-4, rtol=1e-4)
