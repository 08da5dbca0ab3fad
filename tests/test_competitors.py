"""The methods the field compares with: the init claims of their switch settings, exact parameter budgets,
the equivalences their equations imply, bad switches (the contract all methods share: test_method_contract.py).
``SETTINGS``: the switch settings the contract checks too."""

import pytest
import torch
from test_model import assert_causal

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import (
    AttentionResiduals,
    DeepCrossAttention,
    DenseFormer,
    HyperConnections,
    LAuReL,
    LIMe,
    MUDDFormer,
    ValueResidual,
    Vanilla,
    VerticalAttention,
)
from lit_vattn.model.rope import apply_rope, rope_table

CFG = dict(n_layer=4, n_head=4, d_model=64, max_seq_len=32)
L, H, D = CFG["n_layer"], CFG["n_head"], CFG["d_model"]
V = 61
SETTINGS = {
    "denseformer": lambda: DenseFormer(),
    "denseformer-k2-p2": lambda: DenseFormer(dilation=2, period=2),
    "hc": lambda: HyperConnections(),
    "hc-static-n2": lambda: HyperConnections(n=2, dynamic=False),
    "mudd": lambda: MUDDFormer(),
    "mudd-vr": lambda: MUDDFormer(streams="vr"),
    "attnres": lambda: AttentionResiduals(),
    "attnres-block": lambda: AttentionResiduals(block_size=2),
    "dca": lambda: DeepCrossAttention(),
    "dca-k1": lambda: DeepCrossAttention(k=1),
    "value-residual": lambda: ValueResidual(),
    "value-residual-static": lambda: ValueResidual(mix="static"),
    "value-residual-token": lambda: ValueResidual(mix="token"),
    "svformer": lambda: ValueResidual(share=True),
    "lime": lambda: LIMe(),
    "laurel": lambda: LAuReL(),
    "laurel-rw-lr-pa": lambda: LAuReL(previous=2),
    "elc-bert": lambda: VerticalAttention(norm="layernorm"),
}
# the paper says (or its equations give) exactly the vanilla decoder at step 0
# (each method's default is checked against its registered claim by test_method_contract.py)
VANILLA_AT_INIT = {
    "denseformer-k2-p2": lambda: DenseFormer(dilation=2, period=2),
    "mudd-vr": lambda: MUDDFormer(streams="vr"),
    "dca-k1": lambda: DeepCrossAttention(k=1),
    "lime-no-noise": lambda: LIMe(init_noise=False),
    "laurel-rw-lr-pa": lambda: LAuReL(previous=2),
    "laurel-lr-only": lambda: LAuReL(weights=False, rank=8),
}
NOT_VANILLA_AT_INIT = ["attnres-block", "svformer", "elc-bert"]


def build(make, seed=0, **cfg):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **cfg}), V, make() if callable(make) else SETTINGS[make]())


@pytest.mark.parametrize("name", VANILLA_AT_INIT)
def test_exactly_vanilla_at_init(name):
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(build(VANILLA_AT_INIT[name])(x), build(Vanilla)(x), atol=2e-6, rtol=1e-5)


def test_hyper_connections_equal_vanilla_at_init_up_to_the_final_norms_eps():
    """n identical streams summed at the readout: n x the vanilla state, which the final RMSNorm
    maps back exactly but for its eps; with a negligible eps the logits agree."""
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(3))
    for make in (HyperConnections, lambda: HyperConnections(n=3, dynamic=False)):
        torch.testing.assert_close(
            build(make, norm_eps=1e-12)(x), build(Vanilla, norm_eps=1e-12)(x), atol=2e-5, rtol=1e-4
        )
    # one stream with static connections is the plain residual decoder, whatever the eps
    torch.testing.assert_close(
        build(lambda: HyperConnections(n=1, dynamic=False))(x), build(Vanilla)(x), atol=2e-6, rtol=1e-5
    )


@pytest.mark.parametrize("name", NOT_VANILLA_AT_INIT)
def test_methods_that_do_not_start_as_vanilla_do_not(name):
    x = torch.randint(0, V, (2, 16))
    assert not torch.allclose(build(name)(x), build(Vanilla)(x), atol=1e-3)


def test_attention_residuals_start_uniform_and_block_size_one_is_full():
    net = build("attnres")
    net.arch.record_maps = True
    x = torch.randint(0, V, (2, 16))
    full = net(x)
    w = net.arch.depth_map()["weights"].values
    for k in range(2 * L + 1):  # sub-layer k reads x0 and the k outputs before it, uniformly
        torch.testing.assert_close(w[k, : k + 1], torch.full((k + 1,), 1.0 / (k + 1)))
        assert w[k, k + 1 :].abs().sum() == 0
    torch.testing.assert_close(build(lambda: AttentionResiduals(block_size=1))(x), full)


def test_dca_with_k_covering_every_output_is_full_dca():
    x = torch.randint(0, V, (2, 16))
    net_k = build(lambda: DeepCrossAttention(k=L))
    assert net_k.num_params() == build("dca").num_params()
    torch.testing.assert_close(net_k(x), build("dca")(x))


def test_denseformer_dilation_groups_follow_the_reference():
    df = build("denseformer-k2-p2").arch
    assert df.averaged == [2, 4]  # period 2: after blocks 2 and 4 (1-based)
    assert df.group(3) == [1, 3] and df.group(4) == [0, 2, 4]
    assert build("denseformer").arch.group(3) == [0, 1, 2, 3]


def test_lime_mixing_rotated_keys_equals_rotating_mixed_keys():
    """Why LIMe may mix post-RoPE keys: RoPE rotates every head at a position by the same angle."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 6, 10, 16, generator=g)  # (B, heads of two layers, T, d)
    R = torch.randn(3, 6, generator=g)
    cos, sin = rope_table(10, 16, 10000.0)
    mix = lambda t: torch.einsum("hj,bjtd->bhtd", R, t)  # noqa: E731
    torch.testing.assert_close(mix(apply_rope(k, cos, sin)), apply_rope(mix(k), cos, sin), atol=1e-5, rtol=1e-5)


def test_svformer_later_layers_ignore_their_own_value_projection():
    x = torch.randint(0, V, (2, 16))
    net = build("svformer")
    ref = net(x)
    with torch.no_grad():
        net.blocks[2].attn.qkv.weight[2 * D :].normal_()  # layer 2's V rows
    torch.testing.assert_close(net(x), ref)
    with torch.no_grad():
        net.blocks[0].attn.qkv.weight[2 * D :].normal_()  # layer 0's V rows feed every layer
    assert not torch.allclose(net(x), ref)


def _mudd_params(streams=4, expand_last=True):
    total = 0
    for i in range(L):
        C, n = (1 if i == L - 1 else streams), i + 2
        hid = C * n * (4 if i == L - 1 and expand_last else 1)
        hid = (hid // 64 + 1) * 64
        total += D * hid + hid * C * n + C * n
    return total


def test_parameter_budgets_against_vanilla():
    base = build(Vanilla).num_params()
    extra = {name: build(name).num_params() - base for name in SETTINGS}
    assert extra["denseformer"] == L * (L + 3) // 2  # sum_i (i + 1) scalars
    assert extra["denseformer-k2-p2"] == 2 + 3  # after block 2: X0, X2; after block 4: X0, X2, X4
    n = 4
    assert extra["hc"] == 2 * L * (n * (n + 1) + n + D * (n + 1) + D + D + 2)
    assert extra["hc-static-n2"] == 2 * L * (2 * 3 + 2)
    assert extra["mudd"] == _mudd_params(4) and extra["mudd-vr"] == _mudd_params(2)
    assert extra["attnres"] == extra["attnres-block"] == 2 * D * (2 * L + 1)
    assert extra["dca"] == sum(3 * D + 3 * (l + 1) for l in range(L)) + D + (L + 1)
    assert extra["value-residual"] == extra["svformer"] == 0
    assert extra["value-residual-static"] == (L - 1) * H
    assert extra["value-residual-token"] == (L - 1) * (D * H + H)
    assert extra["lime"] == sum(H * (l + 1) * H for l in range(1, L))
    assert extra["laurel"] == 2 * L * (2 + 2 * 16 * D)
    assert extra["laurel-rw-lr-pa"] == extra["laurel"] + 2 * L * 2
    assert extra["elc-bert"] == L * (L + 1)


def test_measured_flops_against_vanilla():
    T = 32
    base = build(Vanilla).flops_per_token(T)
    flops = {name: build(name).flops_per_token(T) for name in SETTINGS}
    for name in ("denseformer", "value-residual", "svformer", "elc-bert"):
        assert flops[name] == base, name  # weighted sums only: no matmul
    for name in ("hc", "mudd", "dca", "lime", "laurel", "attnres", "value-residual-token"):
        assert flops[name] > base, name
    # LAuReL's low-rank maps: 2 matmuls of D x r per sub-layer, 6 FLOPs per multiply-add in training
    assert flops["laurel"] - base == 2 * L * 6 * 2 * D * 16


def test_reader_parameters_get_their_groups(bpe_text):
    from lit_vattn.train.module import LanguageModel

    lm = LanguageModel(config=GPTConfig(**CFG), arch=LIMe(), vocab_size=V, lr=1e-3, mix_lr_mult=2.0)
    groups = lm.param_groups()
    routers = {id(p) for p in lm.net.arch.parameters()}
    (g,) = [g for g in groups if {id(p) for p in g["params"]} == routers]
    assert g["lr"] == pytest.approx(1e-3 * 2.0 * 10.0) and g["weight_decay"] == 0.0


def test_value_residual_composes_with_vertical_attention_and_not_with_lime():
    from lit_vattn.arch import Composed

    net = build(lambda: [VerticalAttention(), ValueResidual(mix="static")])
    assert isinstance(net.arch, Composed)
    assert_causal(net, V)
    with pytest.raises(ValueError, match="LIMe and ValueResidual both override the 'qkv' hook"):
        build(lambda: [LIMe(), ValueResidual()])


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ValueResidual(lam=1.5), r"ValueResidual.lam=1.5 must lie strictly between 0 and 1"),
        (lambda: ValueResidual(share=True, mix="static"), "SVFormer"),
        (lambda: HyperConnections(n=0), r"HyperConnections.n=0 must be >= 1"),
        (lambda: LAuReL(weights=False, rank=0), "is the vanilla decoder"),
        (lambda: LAuReL(rank=65), r"LAuReL.rank=65 must lie in \[0, d_model=64\]"),
        (lambda: DeepCrossAttention(k=0), r"DeepCrossAttention.k=0 must be >= 1"),
        (lambda: AttentionResiduals(block_size=0), r"AttentionResiduals.block_size=0 must be >= 1"),
        (lambda: DenseFormer(dilation=0), r"DenseFormer.dilation=0 and period=1 must be >= 1"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        build(make)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["denseformer", "hc", "mudd", "attnres", "dca", "value-residual", "lime", "laurel"])
def test_loss_decreases_on_real_text(name, bpe_text, train_on):
    torch.manual_seed(0)
    losses = train_on(GPT(GPTConfig(**CFG), bpe_text.vocab_size, SETTINGS[name]()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)


@pytest.mark.parametrize("name", SETTINGS)
def test_depth_maps_are_labelled(name):
    net = build(name)
    net.arch.record_maps = True
    net(torch.randint(0, V, (2, 16)))
    for key, m in net.arch.depth_map().items():
        assert m.values.shape == (len(m.rows), len(m.cols)), key
        assert torch.isfinite(m.values).all(), key
