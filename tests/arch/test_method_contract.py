"""The contract every registered method obeys, checked for each one (``lit_vattn.arch.registry``)
and for the switch settings a method's own test file declares (a module-level ``SETTINGS`` dict of
name -> reader factory in any tests/**/test_*.py): causal, a finite loss and a gradient in every
parameter, the same base weights as vanilla for the same seed, its registered init claim (exactly
vanilla or not), the KV cache giving the full forward, the logit lens reading only states the output
depends on, labelled depth maps, its switches being exactly its constructor's arguments, and (slow)
learning real text. A method registered anywhere is checked here without editing this file."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from helpers import CFG, V, assert_causal, declared_settings

from lit_vattn import GPT, GPTConfig
from lit_vattn.arch import Composed, methods
from lit_vattn.arch.registry import registry
from lit_vattn.model.memory import KVCache


def cases() -> dict:
    """name -> reader factory: every registered method at its defaults, then the declared settings."""
    out = dict(registry())
    out.update({n: make for n, make in declared_settings().items() if n not in out})
    out["va+value-residual"] = lambda: Composed([registry()["va"](), registry()["value-residual"]()])
    return out


CASES = cases()


def build(make, seed: int = 0, **cfg) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **cfg}), V, make())


@pytest.mark.parametrize("name", CASES)
def test_causal(name):
    assert_causal(build(CASES[name]), V)


@pytest.mark.parametrize("name", CASES)
def test_finite_loss_and_gradient_in_every_parameter(name):
    net = build(CASES[name])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # zero-initialised maps (W2, dynamic terms, a qk query) pass gradient on once moved
        opt.zero_grad()
        loss = F.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    dead = [
        n
        for n, p in net.named_parameters()
        if (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0) and not n.startswith("embed")
    ]  # rows of unseen tokens stay zero
    assert not dead


@pytest.mark.parametrize("name", [n for n in CASES if n != "vanilla"])
def test_same_base_init_as_vanilla(name):
    """Like with like: with the same seed every method starts from vanilla's shared weights."""
    ref = dict(build(registry()["vanilla"]).named_parameters())
    for n, p in build(CASES[name]).named_parameters():
        if n in ref:
            assert torch.equal(p, ref[n]), n


@pytest.mark.parametrize("name", [n for n in methods() if n != "vanilla"])
def test_the_registered_init_claim_holds(name):
    """``exact_at_init``: the logits equal vanilla's at step 0, or (claimed false) they differ."""
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    out, ref = build(registry()[name])(x), build(registry()["vanilla"])(x)
    if methods()[name].exact_at_init:
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    else:
        assert not torch.allclose(out, ref, atol=1e-4)


def _moved(make, seed: int = 0) -> GPT:
    """Every parameter moved off its init, so zero-init branches take part in what is compared."""
    net = build(make, seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("name", CASES)
def test_kv_cache_gives_the_full_forward(name):
    net = _moved(CASES[name])
    x = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        full = net(x)  # (2, 24, V)
        cache, parts, at = KVCache(), [], 0
        for t in (7, 1, 1, 3, 1, 5, 1, 5):  # prefill, single tokens, and chunks after a prefill
            parts.append(net.decode(x[:, at : at + t], cache))
            at += t
    assert at == 24 and cache.pos == 24
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", CASES)
def test_the_logit_lens_reads_states_the_output_depends_on(name):
    """Every lensed state receives gradient from the output: none is a dead tensor."""
    net = build(CASES[name])
    out, mem = net.hidden_states(torch.randint(0, V, (2, 10)), return_memory=True)
    lens = net.arch.lens_states(mem, out)
    assert lens
    for _, h in lens:
        h.retain_grad()
    net.head(net.norm(out)).square().sum().backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for _, h in lens)


@pytest.mark.parametrize("name", list(methods()))
def test_switches_are_exactly_the_constructor_arguments(name):
    cls = registry()[name]
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    reader = cls()
    assert list(reader.switches()) == params
    assert reader.spawn().switches() == reader.switches()
    assert reader.name == name  # one name: the class's, the registry's, its config's


@pytest.mark.parametrize("name", CASES)
def test_depth_maps_are_labelled(name):
    net = build(CASES[name])
    net.arch.record_maps = True
    net(torch.randint(0, V, (2, 16)))
    for key, m in net.arch.depth_map().items():
        assert m.values.shape == (len(m.rows), len(m.cols)), key
        assert torch.isfinite(m.values).all(), key


@pytest.mark.slow
@pytest.mark.parametrize("name", list(methods()))
def test_loss_decreases_on_real_text(name, bpe_text, train_on):
    torch.manual_seed(0)
    losses = train_on(GPT(GPTConfig(**CFG), bpe_text.vocab_size, registry()[name]()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
