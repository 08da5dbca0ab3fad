"""The GPU preset's code path, run on the CPU for every registered method: bf16 autocast, a compiled
model (one graph, no recompiles), the multi-source backends under compile, and Lightning's
bf16-mixed precision with a fused AdamW and gradient clipping (the combination that once crashed
every bf16 GPU run at its first step). What differs on a GPU is the kernels, not these paths."""

import pytest
import torch
from helpers import CFG, V, tiny_gpt
from lightning.pytorch import Callback, Trainer

from lit_vattn import GPTConfig
from lit_vattn.arch import LayerwiseAttentionShortcuts, SkipLayerAttention
from lit_vattn.arch.registry import registry
from lit_vattn.train.module import LanguageModel

METHODS = list(registry())
X = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(0))


def _nll(net):
    return net(X[:, :-1], targets=X[:, 1:]) / X[:, 1:].numel()


# gradients that are a small difference of large, nearly equal terms, where bf16 rounding of the
# upstream gradient shows up as a relative error of ~0.2 while the direction is kept: mHC's head reads
# n streams that start as copies of one another, so its weights' gradient cancels across them
CANCELLING = {"mhc": {"arch.head_fn", "arch.head_base", "arch.head_scale"}}


@pytest.mark.parametrize("name", METHODS)
def test_bf16_autocast_gradients_stay_within_bf16_rounding_of_float32(name):
    ref, net = tiny_gpt(registry()[name]), tiny_gpt(registry()[name])
    _nll(ref).backward()
    with torch.autocast("cpu", torch.bfloat16):
        loss = _nll(net)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32  # the NLL is computed in float32
    for (n, p), r in zip(net.named_parameters(), ref.parameters()):
        if r.grad is None or r.grad.abs().sum() == 0:  # rows of tokens not in X
            continue
        if n in CANCELLING.get(name, ()):
            assert torch.nn.functional.cosine_similarity(p.grad.flatten(), r.grad.flatten(), 0) > 0.95, n
            continue
        assert (p.grad - r.grad).norm() <= 5e-2 * r.grad.norm(), n  # measured: at most 1.7e-2 at this shape


@pytest.mark.parametrize("name", METHODS)
def test_compiles_to_one_graph_and_steps_without_recompiling(name):
    """fullgraph: a graph break anywhere (a reader's hook, the memory, the cache) fails here; a
    guard that fails on the second step (e.g. per-layer state) is a recompile, also an error."""
    torch._dynamo.reset()
    net = tiny_gpt(registry()[name])
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # dynamo's tracing, without codegen
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            loss = _nll(compiled)
            loss.backward()
    torch.testing.assert_close(loss, _nll(tiny_gpt(registry()[name])))


@pytest.mark.parametrize(
    "make", [LayerwiseAttentionShortcuts, lambda: SkipLayerAttention(mode="concat", n_skip_heads=2)]
)
@pytest.mark.parametrize("backend", ["sdpa", "merge", "flex"])
def test_multi_source_backends_compile_to_one_graph(make, backend):
    """FlexAttention has no CPU backward: its compiled forward is checked; the others train."""
    torch._dynamo.reset()
    net = tiny_gpt(make, attn_backend=backend)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    with torch.set_grad_enabled(backend != "flex"):
        out = _nll(compiled)
        if backend != "flex":
            out.backward()
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), _nll(tiny_gpt(make, attn_backend="oracle")), rtol=1e-5, atol=1e-5)


class _Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _fit(name, bpe_text, compile=False, steps=3):
    lm = LanguageModel(
        config=GPTConfig(**CFG), arch=registry()[name](), vocab_size=bpe_text.vocab_size, lr=3e-3, compile=compile
    )
    losses = _Losses()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        gradient_clip_val=1.0,
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    trainer.fit(lm, datamodule=bpe_text)
    return trainer, losses.losses


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_lightning_bf16_mixed_with_fused_adamw_and_clipping_trains(name, bpe_text):
    trainer, losses = _fit(name, bpe_text)
    assert trainer.optimizers[0].defaults["fused"]  # the GPU preset's optimizer, on the CPU
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))


@pytest.mark.slow
def test_the_compiled_bf16_model_trains_through_inductor(bpe_text):
    """``compile: true`` as the GPU preset sets it: inductor's C++ backend on the CPU, one method
    whose reader mixes across depth (compile time, not the method, is what this costs)."""
    trainer, losses = _fit("va", bpe_text, compile=True, steps=2)
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_kv_cached_generation_under_compile_matches_eager(name):
    """The sampler's path on a GPU preset: ``decode`` with the KV cache, compiled with dynamic
    shapes; it compiles a bounded number of graphs, not one per position."""
    from lit_vattn.model.memory import KVCache

    torch._dynamo.reset()
    net = tiny_gpt(registry()[name]).eval()
    compiled = torch.compile(net.decode, backend="eager", dynamic=True)

    def greedy(decode) -> tuple[list[int], torch.Tensor]:
        cache, seq, logits = KVCache(), X[:1, :5], []
        step = decode(seq, cache)[:, -1:]
        for _ in range(6):
            logits.append(step)
            nxt = step.argmax(-1)  # (1, 1)
            seq = torch.cat([seq, nxt], 1)
            step = decode(nxt, cache)[:, -1:]
        return seq[0].tolist(), torch.cat(logits, 1)

    tokens, logits = greedy(net.decode)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    c_tokens, c_logits = greedy(compiled)
    assert c_tokens == tokens
    torch.testing.assert_close(c_logits, logits, rtol=1e-5, atol=1e-5)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames
    # measured 3 for every method: the prefill, the first one-token step, then one dynamic graph for the rest
    assert graphs <= 3, f"{graphs} graphs for 7 decode calls: it recompiles per position"
