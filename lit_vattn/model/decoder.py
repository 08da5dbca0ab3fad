"""LLaMA-style decoder (RMSNorm pre-norm, RoPE, SwiGLU, no biases) open to a depth memory.

The architecture-specific part lives in a reader (``lit_vattn.arch``); this file is the part every
architecture shares, in the spirit of nanoGPT/nanochat's single ``gpt.py``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_vattn.arch import as_reader
from lit_vattn.arch.base import Arch, AttnInputs
from lit_vattn.model.config import GPTConfig
from lit_vattn.model.memory import DepthMemory, KVCache
from lit_vattn.model.rope import apply_rope, rope_table


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.proj.residual_out = True  # scaled init

    def split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_head, self.head_dim)).transpose(1, 2)  # (B, H, T, d)

    def forward(self, xq: Tensor, xk: Tensor, xv: Tensor, l: int, rope, reader: Arch, mem: DepthMemory) -> Tensor:
        """Inputs already normalised, (B, T, D) each; one fused projection when they are one tensor."""
        if xk is xq and xv is xq:
            q, k, v = self.qkv(xq).chunk(3, dim=-1)  # (B, T, D) each
        else:
            wq, wk, wv = self.qkv.weight.chunk(3, dim=0)
            q, k, v = F.linear(xq, wq), F.linear(xk, wk), F.linear(xv, wv)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mem.record_kv(l, k, v)  # the layer's own K/V, before any reader changes them, where a reader asked
        q, k, v = reader.qkv(l, q, k, v, mem)  # position-wise: the new positions only
        if mem.cache is not None:  # decoding: the attended keys and values of the earlier positions too
            k, v = mem.cache.extend(l, k, v)  # (B, H, pos + T, d)
        y = reader.attend(l, self, q, k, v, mem)  # (B, H, T, d)
        return self.proj(y.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.d_model, bias=False)
        self.down.residual_out = True

    def forward(self, x: Tensor) -> Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, stream: Tensor, l: int, rope, reader: Arch, mem: DepthMemory) -> Tensor:
        """One block as two sub-layers, each between the reader's ``inputs`` and ``update`` hooks;
        returns the new stream and records inputs and outputs in the memory."""
        x = reader.inputs(l, "attn", stream, mem)
        if isinstance(x, AttnInputs):  # separate Q/K/V inputs, each through this block's norm or the reader's
            norm_k, norm_v = x.norm_k or self.norm1, x.norm_v or self.norm1
            xq = self.norm1(x.q)  # (B, T, D)
            xk = xq if x.k is x.q and norm_k is self.norm1 else norm_k(x.k)
            if x.v is x.q and norm_v is self.norm1:
                xv = xq
            else:
                xv = xk if x.v is x.k and norm_v is norm_k else norm_v(x.v)
            x = x.x
        else:
            xq = xk = xv = self.norm1(x)  # (B, T, D)
        mem.inputs.append({"attn": x})
        mem.normed.append({"attn": xq})  # a reference: the projections keep it alive for backward anyway
        a = self.attn(xq, xk, xv, l, rope, reader, mem)  # (B, T, D)
        mem.outputs.append({"attn": a})
        stream = reader.update(l, "attn", stream, a, mem)
        x = reader.inputs(l, "mlp", stream, mem)
        mem.inputs[l]["mlp"] = x
        mem.normed[l]["mlp"] = xn = self.norm2(x)  # (B, T, D)
        m = self.mlp(xn)  # (B, T, D)
        mem.outputs[l]["mlp"] = m
        stream = reader.update(l, "mlp", stream, m, mem)
        mem.states.append(stream)
        return stream


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, vocab_size: int, arch: Union[None, Arch, list[Arch]] = None):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        V = cfg.padded_vocab(vocab_size)
        self.embed = nn.Embedding(V, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, V, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        with torch.random.fork_rng():  # the reader's construction must not shift the base init
            self.arch = as_reader(arch).bind(cfg)
        cos, sin = rope_table(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for matrices, scaled by 1/sqrt(2L) on residual outputs (GPT-2);
        then the reader re-applies its own init (so a global re-init cannot destroy it)."""
        std = self.cfg.init_std
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                s = std / math.sqrt(2 * self.cfg.n_layer) if getattr(mod, "residual_out", False) else std
                nn.init.normal_(mod.weight, 0.0, s)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, 0.0, std)
            elif isinstance(mod, nn.RMSNorm):
                nn.init.ones_(mod.weight)
        self.arch.reset_parameters()

    def hidden_states(self, idx: Tensor, return_memory: bool = False, cache: Optional[KVCache] = None):
        """What the final norm reads, (B, T, D); with return_memory also the depth memory of the
        pass (for analysis: ``self.arch.lens_states(mem, out)`` are the states the network consumes).
        With a ``cache``, ``idx`` holds the positions after the ``cache.pos`` already processed (the
        cache is extended with them): incremental decoding, exact for every reader (``KVCache``)."""
        B, T = idx.shape
        P = cache.pos if cache is not None else 0
        if P + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {P + T} exceeds GPTConfig.max_seq_len={self.cfg.max_seq_len}")
        rope = (self.rope_cos[P : P + T], self.rope_sin[P : P + T])  # the positions of idx
        x0 = self.embed(idx)  # (B, T, D)
        mem = DepthMemory(x0=x0, keep_kv=self.arch.kv_layers(), rope=rope, cache=cache)
        stream = self.arch.init_stream(x0, mem)  # (B, T, D), or (B, T, n, D) for several streams
        for l, block in enumerate(self.blocks):
            stream = block(stream, l, rope, self.arch, mem)
        out = self.arch.readout(stream, mem)  # (B, T, D)
        if cache is not None:
            cache.pos = P + T
        return (out, mem) if return_memory else out

    @torch.no_grad()
    def decode(self, idx: Tensor, cache: KVCache) -> Tensor:
        """Logits (B, T, vocab_size) of the new positions ``idx`` (B, T) after the ``cache.pos``
        positions the cache holds, extending it: prefill with the prompt, then one token at a time."""
        h = self.hidden_states(idx, cache=cache)
        return self.head(self.norm(h))[..., : self.vocab_size]

    def forward(self, idx: Tensor, targets: Optional[Tensor] = None, per_sequence: bool = False):
        """Logits (B, T, vocab_size) over the real (unpadded) vocabulary; with ``targets`` (B, T)
        instead the summed NLL in nats over the targets >= 0 (-100 = not scored), computed in
        float32 inside this forward so that a compiled model fuses the upcast and the softmax
        rather than materialising float32 logits. ``per_sequence`` also returns each row's summed
        NLL, (B,), for tests paired over evaluation windows (the total is computed as without it)."""
        h = self.hidden_states(idx)
        logits = self.head(self.norm(h))[..., : self.vocab_size]  # (B, T, V)
        if targets is None:
            return logits
        flat = logits.float().flatten(0, 1)
        total = F.cross_entropy(flat, targets.flatten(), ignore_index=-100, reduction="sum")
        if not per_sequence:
            return total
        rows = F.cross_entropy(flat, targets.flatten(), ignore_index=-100, reduction="none").view(targets.shape).sum(1)
        return total, rows  # (), (B,)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, T: int) -> float:
        """Training FLOPs per token (forward + backward), measured with FlopCounterMode on a meta
        twin of this model (``lit_vattn.model.flops``): matmuls and dense attention over every key the
        architecture reads; used for MFU and tables."""
        from lit_vattn.model.flops import flops_per_token

        return flops_per_token(self, T)

    def palm_flops_per_token(self, T: int) -> float:
        """The closed form of a plain decoder's training FLOPs per token, 6 N (weights incl. head
        and norm gains) + 12 L D T attention (PaLM appendix B): equal within 1 % to the measured
        count for vanilla (tested); shown beside the measured count of every method."""
        N = self.num_params(non_embedding=True) - sum(p.numel() for p in self.arch.parameters())
        if self.cfg.tie_embeddings:
            N += self.head.weight.numel()
        return 6.0 * N + 12.0 * self.cfg.n_layer * self.cfg.d_model * T
