"""``LitVattnForCausalLM``: the suite's ``GPT`` (its own modules and weights, unchanged) behind the
``transformers`` causal-LM interface: ``forward`` -> logits (and the mean next-token loss given
``labels``), ``generate()``, ``save_pretrained`` / ``from_pretrained``, so lm-eval's ``hf`` model and
the Hub work on it."""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from lit_vattn.hf.configuration import LitVattnConfig
from lit_vattn.model.config import GPTConfig
from lit_vattn.model.decoder import GPT
from lit_vattn.model.rope import rope_table


def build_readers(readers: list):
    """The reader objects a list of ``{"class_path", "init_args"}`` names (none: vanilla)."""
    out = []
    for r in readers:
        module, _, name = r["class_path"].rpartition(".")
        out.append(getattr(importlib.import_module(module), name)(**(r.get("init_args") or {})))
    return out or None


class LitVattnForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LitVattnConfig
    base_model_prefix = "net"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: LitVattnConfig):
        super().__init__(config)
        known = {f.name for f in fields(GPTConfig)}
        self.net = GPT(GPTConfig(**{k: v for k, v in config.gpt.items() if k in known}), config.vocab_size,
                       build_readers(config.readers))  # fmt: skip
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"net.head.weight": "net.embed.weight"}
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        """Parameters: the decoder initialises itself (``GPT.reset_parameters``) and loading replaces
        every one. Buffers that checkpoints do not hold (transformers builds the model empty first):
        the RoPE table is recomputed, the readers' depth-map accumulators start at zero."""
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                continue
            if isinstance(module, GPT) and name in ("rope_cos", "rope_sin"):
                cfg = module.cfg
                cos, sin = rope_table(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
                buf.copy_(cos if name == "rope_cos" else sin)
            else:
                buf.zero_()

    def get_input_embeddings(self):
        return self.net.embed

    def get_output_embeddings(self):
        return self.net.head

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, vocab_size), and with ``labels`` (the inputs; shifted here, -100 = not scored)
        the mean next-token loss. ``attention_mask`` must be all ones: the decoder attends causally
        over every position of a row, so padded rows are refused rather than scored wrong."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "LitVattnForCausalLM attends over every position of a row: pass unpadded rows (batch size 1, "
                "or rows of equal length) without zeros in attention_mask"
            )
        logits = self.net(input_ids)  # (B, T, V)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # no cache: each step runs the whole sequence (exact for every reader); beyond max_seq_len the
        # decoder raises rather than sliding the window
        return {"input_ids": input_ids}
