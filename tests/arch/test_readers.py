"""The reader interface itself: readers that widen the stream or feed Q, K, V separately plug in
without touching the model; readers compose; switches come from the constructor; the logit lens
reads the states the network consumes."""

import inspect

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_causal
from torch import nn

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import (
    Arch,
    AttnInputs,
    Composed,
    LayerwiseAttentionShortcuts,
    SkipLayerAttention,
    Vanilla,
    VerticalAttention,
)

CFG = GPTConfig(n_layer=4, n_head=4, d_model=32, max_seq_len=32)
V = 53


class TwoStreams(Arch):
    """Toy Hyper-Connections-like reader: two residual streams (B, T, 2, D); each sub-layer reads a
    learned mix of them and writes its output into each with a learned gain."""

    name = "two_streams"

    def __init__(self, n: int = 2):
        super().__init__()
        self.n = n

    def bind(self, cfg):
        super().bind(cfg)
        self.read = nn.Parameter(torch.zeros(cfg.n_layer, 2, self.n))
        self.write = nn.Parameter(torch.zeros(cfg.n_layer, 2, self.n))
        return self

    def reset_parameters(self):
        with torch.no_grad():
            self.read.fill_(1.0 / self.n)
            self.write.fill_(1.0)
            self.write[:, :, 1:] = 0.5

    def init_stream(self, x0, mem):
        return x0.unsqueeze(-2).expand(*x0.shape[:-1], self.n, x0.shape[-1])  # (B, T, n, D)

    def inputs(self, l, s, stream, mem):
        w = self.read[l, ("attn", "mlp").index(s)]  # (n,)
        return torch.einsum("btnd,n->btd", stream, w)  # (B, T, D)

    def update(self, l, s, stream, out, mem):
        g = self.write[l, ("attn", "mlp").index(s)]  # (n,)
        return stream + g[:, None] * out.unsqueeze(-2)  # (B, T, n, D)

    def readout(self, stream, mem):
        return stream.mean(-2)


class SeparateQKV(Arch):
    """Toy MUDDFormer-like reader: queries read the stream, keys a learned mix of the embedding
    and the stream, values the last recorded block state (or the embedding in block 0)."""

    name = "separate_qkv"

    def bind(self, cfg):
        super().bind(cfg)
        self.key_mix = nn.Parameter(torch.full((cfg.n_layer,), 0.5))
        return self

    def inputs(self, l, s, stream, mem):
        if s != "attn":
            return stream
        k = self.key_mix[l] * mem.x0 + (1 - self.key_mix[l]) * stream
        v = mem.states[l - 1] if l > 0 else mem.x0
        return AttnInputs(x=stream, q=stream, k=k, v=v)


class ValueGate(Arch):
    """Toy value-residual-like reader on the ``qkv`` hook: v_l + lam_l * v_0, lam zero at init."""

    name = "value_gate"

    def bind(self, cfg):
        super().bind(cfg)
        self.lam = nn.Parameter(torch.zeros(cfg.n_layer))
        return self

    def kv_layers(self):
        return frozenset({0})

    def qkv(self, l, q, k, v, mem):
        return q, k, v + self.lam[l] * mem.kv[0][1]


TOYS = {
    "two_streams": TwoStreams,
    "separate_qkv": SeparateQKV,
    "va+value_gate": lambda: [VerticalAttention(), ValueGate()],
    "las+va": lambda: [LayerwiseAttentionShortcuts(), VerticalAttention(init="previous")],
}


def build(make, seed=0):
    torch.manual_seed(seed)
    return GPT(CFG, V, make())


@pytest.mark.parametrize("name", TOYS)
def test_toy_readers_are_causal(name):
    assert_causal(build(TOYS[name]), V)


@pytest.mark.parametrize("name", TOYS)
def test_toy_readers_give_a_gradient_to_every_parameter(name):
    net = build(TOYS[name])
    x = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # zero-init gates pass gradient on once they have moved
        opt.zero_grad()
        F.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
    dead = [
        n
        for n, p in net.named_parameters()
        if not n.startswith("embed") and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not dead


def test_two_streams_keep_the_model_and_the_lens_generic():
    net = build(TwoStreams)
    out, mem = net.hidden_states(torch.randint(0, V, (2, 9)), return_memory=True)
    assert out.shape == (2, 9, 32) and mem.states[0].shape == (2, 9, 2, 32)
    lens = net.arch.lens_states(mem, out)  # the block inputs (B, T, D): the mixes the blocks read
    assert [n for n, _ in lens] == ["in0", "in1", "in2", "in3", "readout"] and all(
        h.shape == (2, 9, 32) for _, h in lens
    )


def test_composition_routes_each_hook_to_its_owner():
    x = torch.randint(0, V, (2, 12))
    both, va = build(TOYS["va+value_gate"]), build(VerticalAttention)
    assert isinstance(both.arch, Composed)
    torch.testing.assert_close(both(x), va(x), rtol=0, atol=0)  # the gate starts at zero
    with torch.no_grad():
        both.arch.readers[1].lam.fill_(0.5)
    assert not torch.allclose(both(x), va(x))
    assert both.arch.switches() == {
        "readers": [{"class": "VerticalAttention", **VerticalAttention().switches()}, {"class": "ValueGate"}]
    }
    assert set(both.arch.depth_map()) == {"va_weights"}
    assert type(both.arch.spawn()) is Composed


def test_two_readers_claiming_one_hook_are_refused():
    with pytest.raises(
        ValueError, match="LayerwiseAttentionShortcuts and SkipLayerAttention both override the 'attend' hook"
    ):
        GPT(CFG, V, [LayerwiseAttentionShortcuts(), SkipLayerAttention()])
    with pytest.raises(ValueError, match="empty list"):
        GPT(CFG, V, [])


def test_model_and_base_know_no_method():
    import lit_vattn.arch.base as base
    import lit_vattn.model.decoder as model

    for mod in (base, model):
        src = inspect.getsource(mod)
        for word in ("VerticalAttention", "LayerwiseAttentionShortcuts", "SkipLayerAttention", "las", "sla", "feats"):
            assert f" {word}" not in src and f".{word}" not in src, (mod.__name__, word)


@pytest.mark.parametrize(
    "make",
    [
        Vanilla,
        VerticalAttention,
        lambda: VerticalAttention(readout="mixed"),
        LayerwiseAttentionShortcuts,
        SkipLayerAttention,
        TwoStreams,
        SeparateQKV,
    ],
)
def test_the_logit_lens_reads_states_the_output_depends_on(make):
    """Every lensed state receives gradient from the output: none is a dead tensor."""
    net = build(make)
    out, mem = net.hidden_states(torch.randint(0, V, (2, 10)), return_memory=True)
    lens = net.arch.lens_states(mem, out)
    for _, h in lens:
        h.retain_grad()
    net.head(net.norm(out)).square().sum().backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for _, h in lens)


def test_vas_residual_states_are_not_consumed_and_the_lens_skips_them():
    """Why the lens reads block inputs: VA's residual states h_1..h_{L-1} never reach the output."""
    net = build(VerticalAttention)
    out, mem = net.hidden_states(torch.randint(0, V, (2, 10)), return_memory=True)
    dead = mem.states[:-1]
    for h in dead:
        h.retain_grad()
    net.head(net.norm(out)).square().sum().backward()
    assert all(h.grad is None for h in dead)
