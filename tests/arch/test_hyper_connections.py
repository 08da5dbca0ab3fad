"""Hyper-Connections: vanilla at init up to the final norm's eps, its budget, and the switches it
refuses. ``SETTINGS``: the switch settings the shared contract checks too."""

import pytest
import torch
from helpers import D, L, V, tiny_gpt

from lit_vattn.arch import HyperConnections, Vanilla
from lit_vattn.model.memory import DepthMemory

SETTINGS = {"hc-static-n2": lambda: HyperConnections(n=2, dynamic=False)}


def test_equal_to_vanilla_at_init_up_to_the_final_norms_eps():
    """n identical streams summed at the readout: n x the vanilla state, which the final RMSNorm
    maps back exactly but for its eps; with a negligible eps the logits agree."""
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(3))
    for make in (HyperConnections, lambda: HyperConnections(n=3, dynamic=False)):
        torch.testing.assert_close(
            tiny_gpt(make, norm_eps=1e-12)(x), tiny_gpt(Vanilla, norm_eps=1e-12)(x), atol=2e-5, rtol=1e-4
        )
    # one stream with static connections is the plain residual decoder, whatever the eps
    torch.testing.assert_close(
        tiny_gpt(lambda: HyperConnections(n=1, dynamic=False))(x), tiny_gpt(Vanilla)(x), atol=2e-6, rtol=1e-5
    )


def test_parameter_and_flop_budget_against_vanilla():
    base, T, n = tiny_gpt(Vanilla), 32, 4
    extra = tiny_gpt(HyperConnections).num_params() - base.num_params()
    assert extra == 2 * L * (n * (n + 1) + n + D * (n + 1) + D + D + 2)
    assert tiny_gpt(SETTINGS["hc-static-n2"]).num_params() - base.num_params() == 2 * L * (2 * 3 + 2)
    assert tiny_gpt(HyperConnections).flops_per_token(T) > base.flops_per_token(T)


def test_impossible_switches_fail_at_construction():
    with pytest.raises(ValueError, match=r"HyperConnections.n=0 must be >= 1"):
        tiny_gpt(lambda: HyperConnections(n=0))


class _Literal(HyperConnections):
    """The connections as the paper writes them: RMSNorm_k(H) materialised, then W_a and w_b."""

    def _connections(self, k, H):
        A, beta = self.static_alpha[k], self.static_beta[k]
        Hn = H * torch.rsqrt(H.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps) * self.norm_weight[k]
        A = A + self.alpha_scale[k] * torch.tanh(Hn @ self.dyn_alpha[k])
        return A, beta + self.beta_scale[k] * torch.tanh(Hn @ self.dyn_beta[k])

    def update(self, l, s, stream, out, mem):
        carried, beta = self.slot(mem).pop("pending")
        return carried + beta.unsqueeze(-1) * out.unsqueeze(-2)


def test_folded_norm_and_fused_update_equal_the_papers_formula_with_gradients():
    """The gain folded into the projection and the norm applied to its n+2 outputs give the
    literal RMSNorm -> W_a, w_b form's logits and gradients, away from the init (every term live);
    in float64, so that only a difference in the formula (not rounding order) could fail."""
    ours, lit = tiny_gpt(HyperConnections).double(), tiny_gpt(_Literal).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in ours.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    lit.load_state_dict(ours.state_dict())
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(ours(x), lit(x), atol=1e-10, rtol=1e-10)
    ours(x, targets=y).backward()
    lit(x, targets=y).backward()
    for (name, a), b in zip(ours.named_parameters(), lit.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


def test_each_sub_layer_equals_lucidrains_hyper_connections_with_gradients():
    """Parity with the code the reader follows (``hyper-connections``, lucidrains, the ``parity`` extra):
    each sub-layer's branch input and stream update, and their gradients, with the weights mapped as
    static_alpha[k] -> static_alpha, dyn_alpha[k] -> dynamic_alpha_fn, alpha_scale[k] ->
    dynamic_alpha_scale, static_beta[k] -> static_beta, dyn_beta[k] -> dynamic_beta_fn, beta_scale[k]
    -> dynamic_beta_scale, norm_weight[k] - 1 -> norm.gamma; its streams sit in the batch dimension.
    The one departure is the norm's eps (its F.normalize clamps the norm at 1e-12; ours adds the
    model's norm_eps to the mean square): with norm_eps 1e-12 the two agree. Also: its init is ours."""
    ref_mod = pytest.importorskip("hyper_connections.hyper_connections")
    from einops import rearrange

    net = tiny_gpt(HyperConnections, norm_eps=1e-12)
    arch, n = net.arch, net.arch.n
    for k in range(2 * L):
        fresh = ref_mod.HyperConnections(n, dim=D, layer_index=k)
        torch.testing.assert_close(fresh.static_alpha, arch.static_alpha[k].detach(), atol=0, rtol=0)
        torch.testing.assert_close(fresh.static_beta, arch.static_beta[k].detach(), atol=0, rtol=0)
    _perturb(arch)
    g = torch.Generator().manual_seed(11)
    for k in range(2 * L):
        ref = ref_mod.HyperConnections(n, dim=D, layer_index=k)
        with torch.no_grad():
            ref.static_alpha.copy_(arch.static_alpha[k])
            ref.dynamic_alpha_fn.copy_(arch.dyn_alpha[k])
            ref.dynamic_alpha_scale.copy_(arch.alpha_scale[k])
            ref.static_beta.copy_(arch.static_beta[k])
            ref.dynamic_beta_fn.copy_(arch.dyn_beta[k])
            ref.dynamic_beta_scale.copy_(arch.beta_scale[k])
            ref.norm.gamma.copy_(arch.norm_weight[k] - 1)
        H = torch.randn(2, 5, n, D, generator=g, requires_grad=True)
        out = torch.randn(2, 5, D, generator=g)
        x_ref, add = ref(rearrange(H, "b t s d -> (b s) t d"))
        new_ref = rearrange(add(out), "(b s) t d -> b t s d", s=n)

        H2 = H.detach().clone().requires_grad_()
        mem = DepthMemory(H2[..., 0, :])
        l, s = divmod(k, 2)
        x = arch.inputs(l, ("attn", "mlp")[s], H2, mem)
        new = arch.update(l, ("attn", "mlp")[s], H2, out, mem)
        torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new, new_ref, atol=1e-5, rtol=1e-5)

        w = torch.randn(new.shape, generator=g)
        ((new_ref * w).sum() + (x_ref * w[..., 0, :]).sum()).backward()
        ((new * w).sum() + (x * w[..., 0, :]).sum()).backward()
        torch.testing.assert_close(H2.grad, H.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(arch.dyn_alpha.grad[k], ref.dynamic_alpha_fn.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(arch.norm_weight.grad[k], ref.norm.gamma.grad, atol=1e-4, rtol=1e-4)
        arch.zero_grad()


def _perturb(arch):
    with torch.no_grad():
        g = torch.Generator().manual_seed(10)
        for p in arch.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
