"""The three inter-layer architectures: causality, gradients, budgets, learning, bad switches."""

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import LayerwiseAttentionShortcuts, SkipLayerAttention, Vanilla, VerticalAttention, va

CFG = dict(n_layer=4, n_head=4, d_model=64, max_seq_len=32)
V = 61
SETTINGS = {
    "vanilla": lambda: Vanilla(),
    "va": lambda: VerticalAttention(),
    "va-qk-residual-mixed": lambda: VerticalAttention(weights="qk", qk_heads=2, sources="residual", readout="mixed"),
    "va-keep-previous-nonorm": lambda: VerticalAttention(keep_residual=True, init="previous", norm="none"),
    "las": lambda: LayerwiseAttentionShortcuts(),
    "las-all-depthemb-noself": lambda: LayerwiseAttentionShortcuts(
        layers=[0, 1, 2], depth_embedding=True, keep_self=False, feature_dim=32
    ),
    "las-norm": lambda: LayerwiseAttentionShortcuts(feature_norm=True),
    "sla": lambda: SkipLayerAttention(),
    "sla-concat": lambda: SkipLayerAttention(mode="concat", n_skip_heads=2),
    "sla-absolute": lambda: SkipLayerAttention(skip_layers=[2, 3], source=0, source_mode="absolute"),
}


def build(name, seed=0, **cfg):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **cfg}), V, SETTINGS[name]())


@pytest.mark.parametrize("name", ["las", "las-all-depthemb-noself", "sla-concat"])
def test_every_attention_backend_gives_the_same_model(name):
    """Whole-model logits and parameter gradients agree across the multi-source backends."""
    x = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("oracle", "sdpa", "merge"):
        net = build(name, attn_backend=backend)
        loss = F.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        grads[backend] = (loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    ref_loss, ref = grads.pop("oracle")
    for backend, (loss, g) in grads.items():
        torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5, msg=backend)
        assert g.keys() == ref.keys()
        for n in g:
            torch.testing.assert_close(g[n], ref[n], atol=1e-5, rtol=1e-4, msg=f"{backend}: {n}")


CUDA_CASES = [(n, b, False) for n in ("las", "sla-concat") for b in ("sdpa", "flex", "merge")]
CUDA_CASES += [("las", "flex", True), ("las", "merge", True), ("va", "auto", True), ("sla", "auto", True)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")
@pytest.mark.parametrize("name,backend,compiled", CUDA_CASES)
def test_cuda_bf16_model_matches_the_float32_oracle(name, backend, compiled):
    """On a GPU, in bf16 autocast (and compiled where marked), whole-model logits and every
    parameter gradient stay within bf16 rounding of the same model run in float32 through the
    oracle attention."""
    x = torch.randint(0, V, (8, 33), generator=torch.Generator().manual_seed(0)).cuda()
    ref = build(name, attn_backend="oracle").cuda()
    F.cross_entropy(ref(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    net = build(name, attn_backend=backend).cuda()
    if compiled:
        net.compile()
    with torch.autocast("cuda", torch.bfloat16):
        logits = net(x[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    with torch.no_grad():
        ref_logits = ref(x[:, :-1])
    assert (logits.float() - ref_logits).norm() / ref_logits.norm() < 1e-2
    for (n, p), (_, r) in zip(net.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and r.grad is not None, n
        assert (p.grad.float() - r.grad).norm() <= 3e-2 * r.grad.norm() + 1e-6, n


def test_parameter_budgets_against_vanilla():
    base = build("vanilla").num_params()
    L, D = CFG["n_layer"], CFG["d_model"]
    assert build("sla").num_params() == base  # zero new parameters
    assert build("va").num_params() == base + L * (L + 1)  # one logit per (layer, source)
    assert build("va-qk-residual-mixed").num_params() == base + (L + 1) ** 2 + 2 * D * 2 * 16
    las = build("las")
    assert las.arch.layers == [1]
    assert las.num_params() == base + D + 2 * D * D  # RMSNorm + two D x D maps
    # extra FLOPs: none for SLA replace, K sources for LAS, 2T keys on skip heads for SLA concat
    T = 32
    assert build("sla").flops_per_token(T) == build("vanilla").flops_per_token(T)
    assert build("sla-concat").flops_per_token(T) > build("vanilla").flops_per_token(T)
    # LAS measured: one more attention over T keys + the K/V projections (2 D x D) and the feature
    # map (2 D x D) of its one source
    assert build("las").flops_per_token(T) - build("vanilla").flops_per_token(T) == 12 * D * T + 6 * 4 * D * D
    # VA adds only the weighted sums (not counted: no matmul); its qk form adds per-row queries and keys
    assert build("va").flops_per_token(T) == build("vanilla").flops_per_token(T)
    assert build("va-qk-residual-mixed").flops_per_token(T) > build("vanilla").flops_per_token(T)


def test_no_setting_is_identity_at_init_and_the_docs_say_so():
    x = torch.randint(0, V, (2, 16))
    ref = build("vanilla")(x)
    for name in ("va", "las", "sla"):
        out = build(name)(x)
        assert not torch.allclose(out, ref, atol=1e-4), name
    assert "Not identity at init" in inspect.getmodule(LayerwiseAttentionShortcuts).__doc__
    assert "Not identity at init" in va.__doc__


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla", "va", "las", "sla", "sla-concat"])
def test_loss_decreases_on_real_text(name, bpe_text, train_on):
    torch.manual_seed(0)
    losses = train_on(GPT(GPTConfig(**CFG), bpe_text.vocab_size, SETTINGS[name]()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)


def test_depth_maps_for_analysis():
    net = build("va")
    w = net.arch.depth_map()["weights"]
    assert w.values.shape == (4, 5) and w.cols[0] == "x0" and w.rows[-1] == "block 3"
    torch.testing.assert_close(w.values.sum(1), torch.ones(4))
    assert torch.all(w.values.triu(1) == 0)  # block l reads only sources 0..l
    qk = build("va-qk-residual-mixed")
    qk.arch.record_maps = True
    qk(torch.randint(0, V, (2, 16)))
    m = qk.arch.depth_map()["weights"]
    assert m.values.shape == (5, 5) and m.rows[-1] == "readout"
    las = build("las-all-depthemb-noself")
    assert las.arch.depth_map() == {}  # nothing recorded yet
    las.arch.record_maps = True
    las(torch.randint(0, V, (2, 16)))
    mass = las.arch.depth_map()["mass"]
    assert mass.values.shape == (1, 3) and mass.cols == ["h1", "h2", "h3"] and abs(mass.values.sum().item() - 1) < 1e-5
    las.arch.reset_maps()
    assert las.arch.depth_map() == {}
    sla = build("sla-concat")
    sla.arch.record_maps = True
    sla(torch.randint(0, V, (2, 16)))
    m = sla.arch.depth_map()
    assert m["routing"].values.sum() == 3 * 2 and m["earlier_mass"].values.shape == (4, 4)
    assert 0 < m["earlier_mass"].values[3, 0] < 1


def test_las_norm_share_and_per_source_outputs_add_up():
    from lit_vattn.model import attention

    q, ks, vs = (
        torch.randn(2, 2, 8, 4),
        [torch.randn(2, 2, 8, 4) for _ in range(3)],
        [torch.randn(2, 2, 8, 4) for _ in range(3)],
    )
    parts = attention.source_outputs(q, ks, vs)  # (B, H, T, m, d)
    torch.testing.assert_close(parts.sum(3), attention.oracle(q, ks, vs))
    torch.manual_seed(0)
    las = GPT(GPTConfig(**CFG), V, LayerwiseAttentionShortcuts(layers="all"))
    las.arch.record_maps = True
    las(torch.randint(0, V, (2, 16)))
    share = las.arch.depth_map()["norm_share"]
    assert share.cols == ["h1", "h2", "h3", "self"] and abs(share.values.sum().item() - 1) < 1e-5


def test_ablating_every_las_feature_source_is_the_model_without_them():
    """Removing a source leaves it out of the softmax: with every feature source removed the final
    layer attends to its own K/V only, which is the same weights with no shortcut layers."""
    torch.manual_seed(0)
    las = GPT(GPTConfig(**CFG), V, LayerwiseAttentionShortcuts(layers="all")).eval()
    plain = GPT(GPTConfig(**CFG), V, LayerwiseAttentionShortcuts(layers=[])).eval()
    plain.load_state_dict({k: v for k, v in las.state_dict().items() if ".phi." not in k})
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        intact = las(idx)
        las.arch.ablate(frozenset(["h1", "h2", "h3"]))
        torch.testing.assert_close(las(idx), plain(idx))
        las.arch.ablate(frozenset(["h2"]))
        one = las(idx)
        las.arch.ablate(frozenset())
        torch.testing.assert_close(las(idx), intact)  # restored exactly
    assert not torch.allclose(one, intact)
    assert las.arch.ablation_units() == ["h1", "h2", "h3", "self"]
    with pytest.raises(ValueError, match="not all"):
        las.arch.ablate(frozenset(["h1", "h2", "h3", "self"]))


def test_ablating_every_sla_skip_block_is_vanilla_with_the_same_weights():
    sla, van = build("sla").eval(), build("vanilla").eval()
    van.load_state_dict(sla.state_dict())
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        assert not torch.allclose(sla(idx), van(idx))
        sla.arch.ablate(frozenset(sla.arch.ablation_units()))
        torch.testing.assert_close(sla(idx), van(idx))
    with pytest.raises(ValueError, match="choose from"):
        sla.arch.ablate(frozenset(["block0"]))


def test_sla_replace_routes_the_source_layers_kv_to_the_skip_heads(monkeypatch):
    from lit_vattn.model import attention

    calls = []
    real = attention.causal

    def spy(q, k, v):
        calls.append((k.detach().clone(), v.detach().clone()))
        return real(q, k, v)

    monkeypatch.setattr(attention, "causal", spy)
    net = build("sla-absolute")  # blocks 2 and 3: heads 0..2 read block 0's own K/V
    net(torch.randint(0, V, (2, 16)))
    H = net.cfg.n_head
    blocks = []  # the K/V every head of each block attended to (a skip block attends per head slice)
    while calls:
        ks, vs = [calls[0][0]], [calls.pop(0)[1]]
        while sum(x.shape[1] for x in ks) < H:
            ks.append(calls[0][0]), vs.append(calls.pop(0)[1])
        blocks.append((torch.cat(ks, 1), torch.cat(vs, 1)))
    calls = blocks
    assert len(calls) == 4
    k0, v0 = calls[0]  # block 0 is not a skip block: its own K/V
    for l in (2, 3):
        k, v = calls[l]
        assert torch.equal(k[:, :3], k0[:, :3]) and torch.equal(v[:, :3], v0[:, :3])
        assert not torch.allclose(k[:, 3:], k0[:, 3:])  # the other heads keep their own
    assert not torch.allclose(calls[1][0][:, :3], k0[:, :3])  # block 1 is not a skip block


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SkipLayerAttention(skip_layers=[0, 1]), "before layer 0"),
        (lambda: SkipLayerAttention(source=3, skip_layers=[2]), "before layer 0"),
        (lambda: SkipLayerAttention(n_skip_heads=5), "n_skip_heads=5"),
        (lambda: SkipLayerAttention(skip_layers=[4]), "skip_layers: index 4"),
        (lambda: SkipLayerAttention(source=2, source_mode="absolute", skip_layers=[1]), "cannot read layer 2"),
        (lambda: LayerwiseAttentionShortcuts(layers=[1, 7]), "layers: index 7"),
        (lambda: LayerwiseAttentionShortcuts(layers=[3]), "layers: index 3"),
        (lambda: LayerwiseAttentionShortcuts(layers=[], keep_self=False), "keep_self"),
        (lambda: VerticalAttention(weights="qk", qk_heads=3), "qk_heads=3"),
    ],
)
def test_impossible_switches_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        GPT(GPTConfig(**CFG), V, make())


def test_va_with_zero_layers_fails():
    with pytest.raises(ValueError, match="n_layer"):
        GPT(GPTConfig(**{**CFG, "n_layer": 0}), V, VerticalAttention())


def test_paper_default_reading_of_sla_on_gpt2_small():
    net = GPT(GPTConfig(n_layer=12, n_head=12, d_model=96), 10, SkipLayerAttention())
    assert net.arch.skip_layers == list(range(3, 12)) and net.arch.n_skip_heads == 9


def test_the_flop_matched_vanilla_config_costs_what_las_costs_at_the_tiny_shape():
    """configs/arch/controls/vanilla-flops-las.yaml: the control a costlier method needs, matched by measurement."""
    import yaml

    from lit_vattn.model.flops import flops_per_token

    root = Path(__file__).resolve().parents[1]
    tiny = yaml.safe_load((root / "configs/reproduce/tiny.yaml").read_text())["model"]["init_args"]["config"]
    hidden = yaml.safe_load((root / "configs/arch/controls/vanilla-flops-las.yaml").read_text())["model"]["init_args"][
        "config"
    ]["mlp_hidden"]
    T = tiny["max_seq_len"]
    las = flops_per_token(GPT(GPTConfig(**tiny), 8192, LayerwiseAttentionShortcuts()), T)
    matched = flops_per_token(GPT(GPTConfig(**tiny, mlp_hidden=hidden), 8192, Vanilla()), T)
    plain = flops_per_token(GPT(GPTConfig(**tiny), 8192, Vanilla()), T)
    assert matched == pytest.approx(las, rel=0.005) and las / plain > 1.04


def test_las_feature_norm_gives_features_the_scale_of_a_normalised_input():
    net = build("las-norm")
    x = torch.randint(0, V, (2, 16))
    _, mem = net.hidden_states(x, return_memory=True)
    feats = net.arch.features(mem)
    rms = torch.stack([f.pow(2).mean(-1).sqrt() for f in feats])
    assert 0.9 < rms.min() and rms.max() < 1.001  # RMS 1 up to the norm's eps (raw features at init are tiny)
    raw = build("las")
    _, mem = raw.hidden_states(x, return_memory=True)
    assert max(float(f.pow(2).mean().sqrt()) for f in raw.arch.features(mem)) < 0.2  # unnormalised: much smaller
