"""Skip-Layer Attention: no new parameters, its FLOPs, the paper's default reading, K/V routing to
the skip heads, its depth maps, ablation, and the switches it refuses. ``SETTINGS``: the switch
settings the shared contract (test_method_contract.py) checks too."""

import pytest
import torch
from helpers import V, tiny_gpt

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import SkipLayerAttention, Vanilla
from lit_vattn.model import attention

SETTINGS = {
    "sla-concat": lambda: SkipLayerAttention(mode="concat", n_skip_heads=2),
    "sla-absolute": lambda: SkipLayerAttention(skip_layers=[2, 3], source=0, source_mode="absolute"),
    "sla-project": lambda: SkipLayerAttention(kv_source="project"),
    "sla-two-sources": lambda: SkipLayerAttention(source=[1, 2]),
    "sla-two-sources-concat-project": lambda: SkipLayerAttention(source=[1, 2], mode="concat", kv_source="project"),
}


def test_parameter_and_flop_budget_against_vanilla():
    base, T = tiny_gpt(Vanilla), 32
    assert tiny_gpt(SkipLayerAttention).num_params() == base.num_params()  # zero new parameters
    assert tiny_gpt(SkipLayerAttention).flops_per_token(T) == base.flops_per_token(T)  # replace: same FLOPs
    assert tiny_gpt(SETTINGS["sla-concat"]).flops_per_token(T) > base.flops_per_token(T)  # 2T keys on skip heads


def test_not_identity_at_init():
    x = torch.randint(0, V, (2, 16))
    assert not torch.allclose(tiny_gpt(SkipLayerAttention)(x), tiny_gpt(Vanilla)(x), atol=1e-4)


def test_paper_default_reading_on_gpt2_small():
    net = GPT(GPTConfig(n_layer=12, n_head=12, d_model=96), 10, SkipLayerAttention())
    assert net.arch.skip_layers == list(range(3, 12)) and net.arch.n_skip_heads == 9


def test_depth_maps_record_routing_and_the_mass_on_earlier_keys():
    net = tiny_gpt(SETTINGS["sla-concat"])
    net.arch.record_maps = True
    net(torch.randint(0, V, (2, 16)))
    m = net.arch.depth_map()
    assert m["routing"].values.sum() == 3 * 2 and m["earlier_mass"].values.shape == (4, 4)
    assert 0 < m["earlier_mass"].values[3, 0] < 1


def test_ablating_every_skip_block_is_vanilla_with_the_same_weights():
    sla, van = tiny_gpt(SkipLayerAttention).eval(), tiny_gpt(Vanilla).eval()
    van.load_state_dict(sla.state_dict())
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        assert not torch.allclose(sla(idx), van(idx))
        sla.arch.ablate(frozenset(sla.arch.ablation_units()))
        torch.testing.assert_close(sla(idx), van(idx))
    with pytest.raises(ValueError, match="choose from"):
        sla.arch.ablate(frozenset(["block0"]))


def test_replace_routes_the_source_layers_kv_to_the_skip_heads(monkeypatch):
    calls = []
    real = attention.causal

    def spy(q, k, v):
        calls.append((k.detach().clone(), v.detach().clone()))
        return real(q, k, v)

    monkeypatch.setattr(attention, "causal", spy)
    net = tiny_gpt(SETTINGS["sla-absolute"])  # blocks 2 and 3: heads 0..2 read block 0's own K/V
    net(torch.randint(0, V, (2, 16)))
    H = net.cfg.n_head
    blocks = []  # the K/V every head of each block attended to (a skip block attends per head slice)
    while calls:
        ks, vs = [calls[0][0]], [calls.pop(0)[1]]
        while sum(x.shape[1] for x in ks) < H:
            ks.append(calls[0][0]), vs.append(calls.pop(0)[1])
        blocks.append((torch.cat(ks, 1), torch.cat(vs, 1)))
    assert len(blocks) == 4
    k0, v0 = blocks[0]  # block 0 is not a skip block: its own K/V
    for l in (2, 3):
        k, v = blocks[l]
        assert torch.equal(k[:, :3], k0[:, :3]) and torch.equal(v[:, :3], v0[:, :3])
        assert not torch.allclose(k[:, 3:], k0[:, 3:])  # the other heads keep their own
    assert not torch.allclose(blocks[1][0][:, :3], k0[:, :3])  # block 1 is not a skip block


def test_project_reads_the_source_blocks_input_through_this_blocks_own_kv_weights():
    """kv_source: project = block 3's skip heads attend to K/V that block 3's own projection makes
    of what block 2's attention read (its normalised input), against an explicit computation."""
    net = tiny_gpt(lambda: SkipLayerAttention(skip_layers=[3], n_skip_heads=4, kv_source="project"))
    assert net.arch.kv_layers() == frozenset()  # nothing borrowed: projected from the memory
    idx = torch.randint(0, V, (2, 16))
    _, mem = net.hidden_states(idx, return_memory=True)
    attn = net.blocks[3].attn
    D, H, d = net.cfg.d_model, net.cfg.n_head, net.cfg.head_dim
    from lit_vattn.model.rope import apply_rope

    def heads(x):
        return x.view(2, 16, H, d).transpose(1, 2)

    qkv3 = mem.normed[3]["attn"] @ attn.qkv.weight.T
    q = apply_rope(heads(qkv3[..., :D]), *mem.rope)
    k_src, v_src = (mem.normed[2]["attn"] @ attn.qkv.weight[D:].T).chunk(2, dim=-1)
    want = attention.oracle(q, [apply_rope(heads(k_src), *mem.rope)], [heads(v_src)])  # (B, H, T, d)
    out = attn.proj(want.transpose(1, 2).reshape(2, 16, D))
    torch.testing.assert_close(mem.outputs[3]["attn"], out, atol=2e-5, rtol=1e-4)
    sla = tiny_gpt(SkipLayerAttention)
    assert tiny_gpt(SETTINGS["sla-project"]).flops_per_token(32) > sla.flops_per_token(32)  # the extra projection
    assert tiny_gpt(SETTINGS["sla-project"]).num_params() == sla.num_params()


def test_several_sources_are_attended_together_by_the_skip_heads():
    """source: [1, 2] = block 3's skip heads attend over blocks 2 and 1's cached K/V at once, block 2's
    over block 1 and 0's; block 1 has no block two below, so it is no skip block by default."""
    net = tiny_gpt(lambda: SkipLayerAttention(source=[1, 2], n_skip_heads=4))
    assert net.arch.skip_layers == [2, 3] and net.arch.kv_layers() == frozenset({0, 1, 2})
    idx = torch.randint(0, V, (2, 16))
    _, mem = net.hidden_states(idx, return_memory=True)
    attn = net.blocks[3].attn
    D, H, d = net.cfg.d_model, net.cfg.n_head, net.cfg.head_dim
    from lit_vattn.model.rope import apply_rope

    q = apply_rope((mem.normed[3]["attn"] @ attn.qkv.weight[:D].T).view(2, 16, H, d).transpose(1, 2), *mem.rope)
    want = attention.oracle(q, [mem.kv[2][0], mem.kv[1][0]], [mem.kv[2][1], mem.kv[1][1]])
    out = attn.proj(want.transpose(1, 2).reshape(2, 16, D))
    torch.testing.assert_close(mem.outputs[3]["attn"], out, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SkipLayerAttention(skip_layers=[0, 1]), "before layer 0"),
        (lambda: SkipLayerAttention(source=3, skip_layers=[2]), "before layer 0"),
        (lambda: SkipLayerAttention(n_skip_heads=5), "n_skip_heads=5"),
        (lambda: SkipLayerAttention(skip_layers=[4]), "skip_layers: index 4"),
        (lambda: SkipLayerAttention(source=2, source_mode="absolute", skip_layers=[1]), "cannot read layer 2"),
        (lambda: SkipLayerAttention(source=[1, 1]), "several distinct"),
        (lambda: SkipLayerAttention(source=[1, 4], skip_layers=[3]), "before layer 0"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        tiny_gpt(make)
