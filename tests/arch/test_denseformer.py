"""DenseFormer: equal to its authors' DWA modules, exactly vanilla at init with dilation, the
reference's dilation groups, its budget, and the switches it refuses. ``SETTINGS``: the switch
settings the shared contract checks too."""

import pytest
import torch
from helpers import L, V, tiny_gpt

from lit_vattn.arch import DenseFormer, Vanilla
from lit_vattn.model.memory import DepthMemory

SETTINGS = {"denseformer-k2-p2": lambda: DenseFormer(dilation=2, period=2)}


def test_dilated_and_periodic_is_exactly_vanilla_at_init():
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(tiny_gpt(SETTINGS["denseformer-k2-p2"])(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_dilation_groups_follow_the_reference():
    df = tiny_gpt(SETTINGS["denseformer-k2-p2"]).arch
    assert df.averaged == [2, 4]  # period 2: after blocks 2 and 4 (1-based)
    assert df.group(3) == [1, 3] and df.group(4) == [0, 2, 4]
    assert tiny_gpt(DenseFormer).arch.group(3) == [0, 1, 2, 3]


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    assert tiny_gpt(DenseFormer).num_params() - base.num_params() == L * (L + 3) // 2  # sum_i (i + 1) scalars
    # after block 2: X0, X2; after block 4: X0, X2, X4
    assert tiny_gpt(SETTINGS["denseformer-k2-p2"]).num_params() - base.num_params() == 2 + 3
    assert tiny_gpt(DenseFormer).flops_per_token(T) == base.flops_per_token(T)  # weighted sums only: no matmul


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"DenseFormer.dilation=0 and period=1 must be >= 1"):
        tiny_gpt(lambda: DenseFormer(dilation=0))


def _reference_forward(net, idx, dilation: int, period: int):
    """epfml/DenseFormer ``denseformer/denseformer.py`` at c99a623 (``DWAModules``), transcribed: the
    package is not on PyPI. One accumulator per residue class mod the dilation holds the stored
    states (x0 in class 0, slot 0); after block i (0-based) its output goes to class (i+1) % k, slot
    (i+1) // k, and when (i+1) % p == 0 the stream becomes the dot product of ``alphas[i].weight``
    (one weight per slot filled so far, the newest last) with that class's slots. Its in-place
    autograd buffer only avoids copies, so a list is used here. Blocks are ours with the plain reader.
    Weights mapped: ``alphas[i].weight`` = ``alphas[str(i + 1)]``."""
    arch, T = net.arch, idx.shape[1]
    rope = (net.rope_cos[:T], net.rope_sin[:T])
    x = net.embed(idx)
    acc = [[] for _ in range(dilation)]
    acc[0].append(x)
    plain, mem = Vanilla().bind(net.cfg), DepthMemory(x0=x)
    for i, block in enumerate(net.blocks):
        x = block(x, i, rope, plain, mem)
        acc[(i + 1) % dilation].append(x)
        assert len(acc[(i + 1) % dilation]) == (i + 1) // dilation + 1  # the slot the reference writes
        if (i + 1) % period == 0:
            w = arch.alphas[str(i + 1)]
            x = torch.tensordot(w, torch.stack(acc[(i + 1) % dilation]), dims=1)
    return net.head(net.norm(x))[..., : net.vocab_size]


@pytest.mark.parametrize("dilation,period", [(1, 1), (2, 2), (3, 1), (1, 2)])
def test_equals_the_authors_dwa_modules_with_gradients(dilation, period):
    """Logits and every DWA weight's gradient equal the reference's (float64), the weights moved off
    their one-hot init."""
    net = tiny_gpt(lambda: DenseFormer(dilation=dilation, period=period)).double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.arch.alphas.values():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    idx = torch.randint(0, V, (2, 12), generator=gen)
    w = torch.randn(2, 12, V, generator=gen, dtype=torch.float64)
    params = list(net.arch.alphas.values())
    got = net(idx)
    g_got = torch.autograd.grad((got * w).sum(), params)
    want = _reference_forward(net, idx, dilation, period)
    g_want = torch.autograd.grad((want * w).sum(), params)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)
