"""Every attention fast path equals the float32 oracle, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from lit_vattn.model import attention

CUDA = torch.cuda.is_available()


def rand_qkv(B=2, H=3, T=40, d=16, m=3, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda: torch.randn(B, H, T, d, generator=g).to(device, dtype).requires_grad_(True)  # noqa: E731
    return mk(), [mk() for _ in range(m)], [mk() for _ in range(m)]


def brute_force(q, ks, vs):
    """Loop over queries: query t sees positions <= t of every source; nothing else."""
    T = q.shape[2]
    out = torch.empty_like(q, dtype=torch.float64)
    for t in range(T):
        k = torch.cat([kk[:, :, : t + 1] for kk in ks], 2).double()
        v = torch.cat([vv[:, :, : t + 1] for vv in vs], 2).double()
        p = (q[:, :, t : t + 1].double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        out[:, :, t : t + 1] = p @ v
    return out


def test_block_causal_mask_is_kv_mod_T_le_q():
    m = attention.block_causal_mask(4, 2, torch.device("cpu"))
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool).repeat(1, 2)
    assert torch.equal(m, expected)


def test_oracle_equals_brute_force():
    q, ks, vs = rand_qkv(T=12)
    torch.testing.assert_close(attention.oracle(q, ks, vs).double(), brute_force(q, ks, vs), atol=1e-5, rtol=1e-5)


def test_builtin_causal_flags_are_wrong_for_concatenated_keys():
    """Why the suite has its own mask: SDPA's is_causal (top-left) drops allowed keys."""
    q, ks, vs = rand_qkv(T=12, m=2)
    wrong = F.scaled_dot_product_attention(q, torch.cat(ks, 2), torch.cat(vs, 2), is_causal=True)
    assert not torch.allclose(wrong.double(), brute_force(q, ks, vs), atol=1e-3)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_flex_block_mask_matches_oracle_forward_cpu(m):
    """FlexAttention has no CPU backward; its forward checks the cached BlockMask here and the
    CUDA test below checks both directions on a GPU."""
    q, ks, vs = rand_qkv(T=40, m=m)
    q, ks, vs = q.detach(), [k.detach() for k in ks], [v.detach() for v in vs]
    torch.testing.assert_close(
        attention.multi_source(q, ks, vs, "flex"), attention.oracle(q, ks, vs), atol=2e-5, rtol=2e-5
    )


@pytest.mark.parametrize("backend", ["sdpa", "auto", "merge"])
@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_fast_path_matches_oracle_forward_and_backward_cpu(backend, m):
    q, ks, vs = rand_qkv(T=40, m=m)
    ref = attention.oracle(q, ks, vs)
    out = attention.multi_source(q, ks, vs, backend)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    gout = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, [q, *ks, *vs], gout)
    g_out = torch.autograd.grad(out, [q, *ks, *vs], gout)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=5e-5)


def test_merge_in_bf16_and_with_one_source():
    """The log-sum-exp merge in bf16 (CPU flash kernel) stays within bf16 rounding of the oracle, and
    its single-source case equals SDPA's causal flash attention."""
    q, ks, vs = rand_qkv(T=64, m=3, dtype=torch.bfloat16)
    ref = attention.oracle(q, ks, vs)
    out = attention.multi_source(q, ks, vs, "merge")
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()) < 1e-2
    gout = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, [q, *ks, *vs], gout)
    g_out = torch.autograd.grad(out, [q, *ks, *vs], gout.bfloat16())
    for a, b in zip(g_out, g_ref):
        assert (a.float() - b).norm() / b.norm() < 2e-2
    q, ks, vs = rand_qkv(T=40, m=1)
    torch.testing.assert_close(attention._MergedCausal.apply(q, ks[0], vs[0]), attention.causal(q, ks[0], vs[0]))


def test_merge_traces_into_one_compiled_graph():
    """torch.compile must not break the graph at the custom autograd.Function (fullgraph=True).
    Older torch (2.11) traced it into wrong gradients on the CPU: there the backend refuses."""
    q, ks, vs = rand_qkv(T=16, m=3)
    if torch.__version__ < attention.MERGE_CPU_COMPILE_MIN_TORCH:
        fn = torch.compile(
            lambda q, ks, vs: attention.multi_source(q, ks, vs, "merge"), backend="aot_eager", fullgraph=True
        )
        with pytest.raises(Exception, match="wrong gradients"):
            fn(q, ks, vs)
        return
    fn = torch.compile(
        lambda q, ks, vs: attention.multi_source(q, ks, vs, "merge"), backend="aot_eager", fullgraph=True
    )
    out, ref = fn(q, ks, vs), attention.oracle(q, ks, vs)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    for a, b in zip(torch.autograd.grad(out.sum(), [q, *ks]), torch.autograd.grad(ref.sum(), [q, *ks])):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=5e-5)


def test_source_mass_sums_to_one():
    q, ks, _ = rand_qkv(m=3)
    mass = attention.source_mass(q, ks)
    torch.testing.assert_close(mass.sum(-1), torch.ones(mass.shape[:-1]))


@pytest.mark.skipif(not CUDA, reason="CUDA kernels need a GPU")
@pytest.mark.parametrize("backend", ["sdpa", "flex", "merge"])
@pytest.mark.parametrize("T,m", [(1024, 2), (1024, 5), (256, 3)])
def test_cuda_fast_paths_match_oracle_bf16(backend, T, m):
    q, ks, vs = rand_qkv(B=2, H=4, T=T, d=64, m=m, device="cuda", dtype=torch.bfloat16)
    ref = attention.oracle(q, ks, vs)
    out = attention.multi_source(q, ks, vs, backend).float()
    rel = (out - ref).norm() / ref.norm()
    assert rel < 1e-2
    gout = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, [q, *ks, *vs], gout)
    g_out = torch.autograd.grad(out, [q, *ks, *vs], gout)
    for a, b in zip(g_out, g_ref):
        assert (a.float() - b).norm() / b.norm() < 2e-2


def test_merge_names_the_torch_versions_it_was_tested_on_and_the_backends_that_run_on_any(monkeypatch):
    from torch.torch_version import TorchVersion

    q = k = v = torch.randn(1, 2, 8, 16)
    monkeypatch.setattr(torch, "__version__", TorchVersion("2.15.0"))
    with pytest.raises(RuntimeError, match=r"torch 2\.15\.0: use attn_backend 'flex' \(GPU\) or 'sdpa'"):
        attention.multi_source(q, [k, k], [v, v], backend="merge")
    for backend in ("sdpa", "auto"):  # the rest of the suite does not depend on the version
        out = attention.multi_source(q, [k, k], [v, v], backend=backend)
        torch.testing.assert_close(out, attention.oracle(q, [k, k], [v, v]))
