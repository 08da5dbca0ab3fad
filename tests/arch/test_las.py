"""Layerwise Attention Shortcuts: its budget, its depth maps, source ablation, the feature norm,
the FLOP-matched control, and the switches it refuses. ``SETTINGS``: the switch settings the shared
contract (test_method_contract.py) checks too."""

from pathlib import Path

import pytest
import torch
from helpers import CFG, ROOT, D, V, tiny_gpt

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import LayerwiseAttentionShortcuts, Vanilla, las
from lit_vattn.model import attention

SETTINGS = {
    "las-all-depthemb-noself": lambda: LayerwiseAttentionShortcuts(
        layers=[0, 1, 2], depth_embedding=True, keep_self=False, feature_dim=32
    ),
    "las-norm": lambda: LayerwiseAttentionShortcuts(feature_norm=True),
    "las-cross": lambda: LayerwiseAttentionShortcuts(shortcut="cross"),
    "las-cross-all-depthemb": lambda: LayerwiseAttentionShortcuts(shortcut="cross", layers="all", depth_embedding=True),
}


def test_cross_reading_adds_a_causal_cross_attention_sub_layer_over_the_features():
    """shortcut=cross: the final block's self-attention is plain, and after it the stream takes
    out(attention(q(norm(h)), kv(features))), explicitly recomputed here from the memory."""
    import torch.nn.functional as F

    from lit_vattn.model import attention
    from lit_vattn.model.rope import apply_rope

    net = tiny_gpt(SETTINGS["las-cross"])
    merged = tiny_gpt(LayerwiseAttentionShortcuts)
    assert net.num_params() - merged.num_params() == 4 * D * D + D  # Q, K/V, out and one norm gain
    idx = torch.randint(0, V, (2, 16))
    out, mem = net.hidden_states(idx, return_memory=True)
    L, H, d, a = net.cfg.n_layer, net.cfg.n_head, net.cfg.head_dim, net.arch
    h = mem.inputs[L - 1]["attn"] + mem.outputs[L - 1]["attn"]  # after the plain self-attention

    def heads(x):
        return x.view(2, 16, H, d).transpose(1, 2)

    q = apply_rope(heads(a.cross_q(a.cross_norm(h))), *mem.rope)
    ks, vs = [], []
    for f in a.features(mem):
        k, v = F.linear(f, a.cross_kv.weight).chunk(2, dim=-1)
        ks.append(apply_rope(heads(k), *mem.rope))
        vs.append(heads(v))
    c = a.cross_out(attention.oracle(q, ks, vs).transpose(1, 2).reshape(2, 16, D))
    torch.testing.assert_close(mem.inputs[L - 1]["mlp"], h + c, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out, h + c + mem.outputs[L - 1]["mlp"], atol=2e-5, rtol=1e-4)
    with torch.no_grad():
        a.ablate(frozenset(a.ablation_units()))  # every source removed: the block without the sub-layer
        out0, mem0 = net.hidden_states(idx, return_memory=True)
        torch.testing.assert_close(mem0.inputs[L - 1]["mlp"], mem0.inputs[L - 1]["attn"] + mem0.outputs[L - 1]["attn"])


def test_the_cross_reading_owns_the_update_hook_and_the_merged_one_leaves_it_free():
    from lit_vattn.arch import VerticalAttention

    tiny_gpt(lambda: [VerticalAttention(), LayerwiseAttentionShortcuts()])  # merged: attend only
    with pytest.raises(ValueError, match="both override the 'update' hook"):
        tiny_gpt(lambda: [VerticalAttention(), LayerwiseAttentionShortcuts(shortcut="cross")])
    with pytest.raises(ValueError, match="shortcut=cross"):
        tiny_gpt(lambda: LayerwiseAttentionShortcuts(shortcut="cross", keep_self=False))


def test_parameter_and_flop_budget_against_vanilla():
    base, net, T = tiny_gpt(Vanilla), tiny_gpt(LayerwiseAttentionShortcuts), 32
    assert net.arch.layers == [1]
    assert net.num_params() == base.num_params() + D + 2 * D * D  # RMSNorm + two D x D maps
    # one more attention over T keys + the K/V projections (2 D x D) and the feature map (2 D x D) of its one source
    assert net.flops_per_token(T) - base.flops_per_token(T) == 12 * D * T + 6 * 4 * D * D


def test_not_identity_at_init_and_the_docs_say_so():
    x = torch.randint(0, V, (2, 16))
    assert not torch.allclose(tiny_gpt(LayerwiseAttentionShortcuts)(x), tiny_gpt(Vanilla)(x), atol=1e-4)
    assert "Not identity at init" in las.__doc__


def test_depth_maps_record_the_mass_on_each_feature_source():
    net = tiny_gpt(SETTINGS["las-all-depthemb-noself"])
    assert net.arch.depth_map() == {}  # nothing recorded yet
    net.arch.record_maps = True
    net(torch.randint(0, V, (2, 16)))
    mass = net.arch.depth_map()["mass"]
    assert mass.values.shape == (1, 3) and mass.cols == ["h1", "h2", "h3"] and abs(mass.values.sum().item() - 1) < 1e-5
    net.arch.reset_maps()
    assert net.arch.depth_map() == {}


def test_norm_share_and_per_source_outputs_add_up():
    q = torch.randn(2, 2, 8, 4)
    ks, vs = [torch.randn(2, 2, 8, 4) for _ in range(3)], [torch.randn(2, 2, 8, 4) for _ in range(3)]
    parts = attention.source_outputs(q, ks, vs)  # (B, H, T, m, d)
    torch.testing.assert_close(parts.sum(3), attention.oracle(q, ks, vs))
    net = tiny_gpt(lambda: LayerwiseAttentionShortcuts(layers="all"))
    net.arch.record_maps = True
    net(torch.randint(0, V, (2, 16)))
    share = net.arch.depth_map()["norm_share"]
    assert share.cols == ["h1", "h2", "h3", "self"] and abs(share.values.sum().item() - 1) < 1e-5


def test_ablating_every_feature_source_is_the_model_without_them():
    """Removing a source leaves it out of the softmax: with every feature source removed the final
    layer attends to its own K/V only, which is the same weights with no shortcut layers."""
    net = tiny_gpt(lambda: LayerwiseAttentionShortcuts(layers="all")).eval()
    plain = tiny_gpt(lambda: LayerwiseAttentionShortcuts(layers=[])).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if ".phi." not in k})
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        intact = net(idx)
        net.arch.ablate(frozenset(["h1", "h2", "h3"]))
        torch.testing.assert_close(net(idx), plain(idx))
        net.arch.ablate(frozenset(["h2"]))
        one = net(idx)
        net.arch.ablate(frozenset())
        torch.testing.assert_close(net(idx), intact)  # restored exactly
    assert not torch.allclose(one, intact)
    assert net.arch.ablation_units() == ["h1", "h2", "h3", "self"]
    with pytest.raises(ValueError, match="not all"):
        net.arch.ablate(frozenset(["h1", "h2", "h3", "self"]))


def test_feature_norm_gives_features_the_scale_of_a_normalised_input():
    x = torch.randint(0, V, (2, 16))
    net = tiny_gpt(SETTINGS["las-norm"])
    _, mem = net.hidden_states(x, return_memory=True)
    rms = torch.stack([f.pow(2).mean(-1).sqrt() for f in net.arch.features(mem)])
    assert 0.9 < rms.min() and rms.max() < 1.001  # RMS 1 up to the norm's eps (raw features at init are tiny)
    raw = tiny_gpt(LayerwiseAttentionShortcuts)
    _, mem = raw.hidden_states(x, return_memory=True)
    assert max(float(f.pow(2).mean().sqrt()) for f in raw.arch.features(mem)) < 0.2  # unnormalised: much smaller


def test_the_flop_matched_vanilla_config_costs_what_las_costs_at_the_tiny_shape():
    """configs/arch/controls/vanilla-flops-las.yaml: the control a costlier method needs, matched by measurement."""
    import yaml

    from lit_vattn.model.flops import flops_per_token

    tiny = yaml.safe_load((ROOT / "configs/reproduce/tiny.yaml").read_text())["model"]["init_args"]["config"]
    control = yaml.safe_load(Path(ROOT / "configs/arch/controls/vanilla-flops-las.yaml").read_text())
    hidden = control["model"]["init_args"]["config"]["mlp_hidden"]
    T = tiny["max_seq_len"]
    cost = flops_per_token(GPT(GPTConfig(**tiny), 8192, LayerwiseAttentionShortcuts()), T)
    matched = flops_per_token(GPT(GPTConfig(**tiny, mlp_hidden=hidden), 8192, Vanilla()), T)
    plain = flops_per_token(GPT(GPTConfig(**tiny), 8192, Vanilla()), T)
    assert matched == pytest.approx(cost, rel=0.005) and cost / plain > 1.04


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: LayerwiseAttentionShortcuts(layers=[1, 7]), "layers: index 7"),
        (lambda: LayerwiseAttentionShortcuts(layers=[3]), "layers: index 3"),
        (lambda: LayerwiseAttentionShortcuts(layers=[], keep_self=False), "keep_self"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        GPT(GPTConfig(**CFG), V, make())
