"""The decoder's size and shape. Field docstrings become ``--help`` text through jsonargparse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class GPTConfig:
    """LLaMA-style decoder: RMSNorm pre-norm, RoPE, SwiGLU MLP, no biases."""

    n_layer: int = 6
    """Number of transformer blocks."""
    n_head: int = 6
    """Attention heads per block; d_model must be divisible by it."""
    d_model: int = 384
    """Residual stream width."""
    mlp_hidden: Optional[int] = None
    """SwiGLU hidden width; default 8/3 * d_model rounded up to a multiple of 64."""
    max_seq_len: int = 1024
    """Longest sequence the RoPE table covers (the DataModule's seq_len must not exceed it)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the token embedding with the output head."""
    init_std: float = 0.02
    """Std of the normal init; residual output projections are scaled by 1/sqrt(2 * n_layer)."""
    vocab_multiple: int = 64
    """Pad the embedding/head rows up to a multiple of this (50257 -> 50304) for fast matmuls."""
    attn_backend: Literal["auto", "sdpa", "flex", "merge", "oracle"] = "auto"
    """Kernel for attention over several key sources: auto = flex on CUDA, sdpa on CPU; merge = one
    flash call per source merged by log-sum-exp (CUDA: fp16/bf16 only); oracle = float32 reference."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "max_seq_len", "vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig.d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"GPTConfig: head dim {self.d_model // self.n_head} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return -(-int(8 * self.d_model / 3) // 64) * 64

    def padded_vocab(self, vocab_size: int) -> int:
        return -(-vocab_size // self.vocab_multiple) * self.vocab_multiple
