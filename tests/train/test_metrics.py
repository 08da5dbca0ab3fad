"""NLL metrics equal a hand computation on a tiny model."""

import math

import torch
import torch.nn.functional as F

from lit_vattn import GPT, GPTConfig
from lit_vattn.train.metrics import NLLMetrics


def test_nll_bpt_ppl_and_bits_per_unit_match_hand_computation():
    torch.manual_seed(0)
    V = 37
    net = GPT(GPTConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=16), V)
    units = torch.rand(V) * 4  # e.g. bytes per token id
    m = NLLMetrics()
    total_nll, total_tok, total_units = 0.0, 0, 0.0
    for _ in range(3):
        x = torch.randint(0, V, (2, 16))
        y = torch.randint(0, V, (2, 16))
        y[0, :5] = -100  # already-scored targets are ignored
        with torch.no_grad():
            logits = net(x)
            nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        m.update(nll, y, units)
        # by hand: -log softmax at the target, summed over valid positions
        logp = torch.log_softmax(logits.double(), -1)
        for b in range(2):
            for t in range(16):
                if y[b, t] >= 0:
                    total_nll -= logp[b, t, y[b, t]].item()
                    total_tok += 1
                    total_units += units[y[b, t]].item()
    out = m.compute("byte")
    assert out["tokens"] == total_tok
    assert math.isclose(out["nll"], total_nll / total_tok, rel_tol=1e-5)
    assert math.isclose(out["bpt"], total_nll / total_tok / math.log(2), rel_tol=1e-5)
    assert math.isclose(out["ppl"], math.exp(total_nll / total_tok), rel_tol=1e-5)
    assert math.isclose(out["bits_per_byte"], total_nll / math.log(2) / total_units, rel_tol=1e-5)
    m.reset()
    assert m.tokens.compute() == 0
