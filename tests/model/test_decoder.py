"""The shared decoder: causality, shapes, init, parameter and FLOP counts."""

import math

import pytest
import torch
from helpers import assert_causal

from lit_vattn import GPT, GPTConfig


def small(**kw):
    return GPTConfig(**{"n_layer": 3, "n_head": 4, "d_model": 64, "max_seq_len": 32, **kw})


def test_vanilla_is_causal():
    assert_causal(GPT(small(), 50), 50)


def test_shapes_padding_and_tied_head():
    net = GPT(small(tie_embeddings=True), 50257)
    assert net.embed.weight.shape[0] == 50304  # padded to a multiple of 64
    assert net.head.weight is net.embed.weight
    assert net(torch.randint(0, 50257, (1, 8))).shape == (1, 8, 50257)


def test_scaled_init():
    cfg = GPTConfig(n_layer=8, n_head=4, d_model=256)
    net = GPT(cfg, 1000)
    assert abs(net.blocks[0].attn.qkv.weight.std().item() - 0.02) < 2e-3
    assert abs(net.blocks[0].mlp.down.weight.std().item() - 0.02 / math.sqrt(16)) < 5e-4


def test_param_and_flop_counts():
    cfg = small()
    net = GPT(cfg, 100)
    D, L, Hd = cfg.d_model, cfg.n_layer, cfg.hidden
    per_block = 4 * D * D + 3 * D * Hd + 2 * D
    V = cfg.padded_vocab(100)
    assert net.num_params() == L * per_block + 2 * V * D + D
    # measured (FlopCounterMode): 6 x every matmul weight (the head included) + 12 L D T attention
    n_matmul = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert net.flops_per_token(32) == 6 * n_matmul + 12 * L * D * 32
    # the PaLM closed form counts the norm gains too and stays within 1 % of the measured count
    assert abs(net.palm_flops_per_token(32) / net.flops_per_token(32) - 1) < 0.01
    big = GPT(GPTConfig(n_layer=12, n_head=12, d_model=768, max_seq_len=1024), 50257)
    assert abs(big.palm_flops_per_token(1024) / big.flops_per_token(1024) - 1) < 0.01


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(d_model=100, n_head=3)
    with pytest.raises(ValueError, match="n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        GPT(small(), 10)(torch.zeros(1, 64, dtype=torch.long))
