"""The multi-source attention backends give the same model: whole-model logits and gradients agree
across oracle, SDPA and the merged kernel on the CPU; on a GPU, bf16 (eager and compiled) stays
within rounding of the float32 oracle."""

import pytest
import torch
import torch.nn.functional as F
from helpers import V, tiny_gpt

from lit_vattn.arch import LayerwiseAttentionShortcuts, SkipLayerAttention, VerticalAttention

READERS = {
    "las": LayerwiseAttentionShortcuts,
    "las-all-depthemb-noself": lambda: LayerwiseAttentionShortcuts(
        layers=[0, 1, 2], depth_embedding=True, keep_self=False, feature_dim=32
    ),
    "sla-concat": lambda: SkipLayerAttention(mode="concat", n_skip_heads=2),
    "va": VerticalAttention,
    "sla": SkipLayerAttention,
}


@pytest.mark.parametrize("name", ["las", "las-all-depthemb-noself", "sla-concat"])
def test_every_attention_backend_gives_the_same_model(name):
    """Whole-model logits and parameter gradients agree across the multi-source backends."""
    x = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("oracle", "sdpa", "merge"):
        net = tiny_gpt(READERS[name], attn_backend=backend)
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
    ref = tiny_gpt(READERS[name], attn_backend="oracle").cuda()
    F.cross_entropy(ref(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    net = tiny_gpt(READERS[name], attn_backend=backend).cuda()
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
