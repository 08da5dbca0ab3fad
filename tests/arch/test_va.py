"""Vertical Attention (and ELC-BERT, VA with LayerNorm): its budget, that it is not vanilla at init
and says so, its depth map, and the switches it refuses. ``SETTINGS``: the switch settings the
shared contract (test_method_contract.py) checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import Vanilla, VerticalAttention, va

SETTINGS = {
    "va-qk-residual-mixed": lambda: VerticalAttention(weights="qk", qk_heads=2, sources="residual", readout="mixed"),
    "va-keep-previous-nonorm": lambda: VerticalAttention(keep_residual=True, init="previous", norm="none"),
    "elc-bert": lambda: VerticalAttention(norm="layernorm"),
    "va-unet": lambda: VerticalAttention(keep_residual=True, pattern="unet"),
}


def test_unet_pattern_adds_each_upper_blocks_mirror_to_the_residual_stream():
    """pattern=unet, L = 4: blocks 0 and 1 read the plain residual stream; block 2 adds block 1's
    normalised output, block 3 block 0's; no routing weight exists to learn."""
    net = tiny_gpt(SETTINGS["va-unet"])
    assert net.num_params() == tiny_gpt(Vanilla).num_params()
    assert [net.arch.skip_source(l) for l in range(4)] == [None, None, 2, 1]  # source j = output of block j-1
    _, mem = net.hidden_states(torch.randint(0, V, (2, 16)), return_memory=True)

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    out = [mem.outputs[l]["attn"] + mem.outputs[l]["mlp"] for l in range(4)]
    for l in (0, 1):
        want = mem.x0 if l == 0 else mem.states[l - 1]
        torch.testing.assert_close(mem.inputs[l]["attn"], want)
    for l, mirror in ((2, 1), (3, 0)):
        torch.testing.assert_close(mem.inputs[l]["attn"], mem.states[l - 1] + rms(out[mirror]), atol=1e-5, rtol=1e-5)
    assert net.arch.depth_map()["weights"].values[3, 1] == 1.0
    with pytest.raises(ValueError, match="pattern=unet"):
        tiny_gpt(lambda: VerticalAttention(pattern="unet"))  # without the residual stream there is nothing to skip onto


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    assert tiny_gpt(VerticalAttention).num_params() == base.num_params() + L * (L + 1)  # one logit per (layer, source)
    qk = tiny_gpt(SETTINGS["va-qk-residual-mixed"])
    assert qk.num_params() == base.num_params() + (L + 1) ** 2 + 2 * D * 2 * 16
    assert tiny_gpt(SETTINGS["elc-bert"]).num_params() == base.num_params() + L * (L + 1)
    # VA adds only the weighted sums (not counted: no matmul); its qk form adds per-row queries and keys
    assert tiny_gpt(VerticalAttention).flops_per_token(T) == base.flops_per_token(T)
    assert tiny_gpt(SETTINGS["elc-bert"]).flops_per_token(T) == base.flops_per_token(T)
    assert qk.flops_per_token(T) > base.flops_per_token(T)


@pytest.mark.parametrize("make", [VerticalAttention, SETTINGS["elc-bert"]])
def test_not_identity_at_init_and_the_docs_say_so(make):
    x = torch.randint(0, V, (2, 16))
    assert not torch.allclose(tiny_gpt(make)(x), tiny_gpt(Vanilla)(x), atol=1e-3)
    assert "Not identity at init" in va.__doc__


def test_depth_map_rows_read_only_earlier_sources_and_sum_to_one():
    w = tiny_gpt(VerticalAttention).arch.depth_map()["weights"]
    assert w.values.shape == (4, 5) and w.cols[0] == "x0" and w.rows[-1] == "block 3"
    torch.testing.assert_close(w.values.sum(1), torch.ones(4))
    assert torch.all(w.values.triu(1) == 0)  # block l reads only sources 0..l
    qk = tiny_gpt(SETTINGS["va-qk-residual-mixed"])
    qk.arch.record_maps = True
    qk(torch.randint(0, V, (2, 16)))
    m = qk.arch.depth_map()["weights"]
    assert m.values.shape == (5, 5) and m.rows[-1] == "readout"


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match="qk_heads=3"):
        tiny_gpt(lambda: VerticalAttention(weights="qk", qk_heads=3))
    with pytest.raises(ValueError, match="n_layer"):
        tiny_gpt(VerticalAttention, n_layer=0)
