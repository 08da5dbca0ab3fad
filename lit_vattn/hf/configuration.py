"""``LitVattnConfig``: the decoder's shape (``GPTConfig``), the method (its readers as
``class_path`` + ``init_args``, as a run's config names them) and the vocabulary."""

from __future__ import annotations

from typing import Optional

from transformers import PretrainedConfig


class LitVattnConfig(PretrainedConfig):
    model_type = "lit_vattn"

    def __init__(
        self,
        gpt: Optional[dict] = None,
        readers: Optional[list] = None,
        vocab_size: int = 50257,
        lit_vattn_version: Optional[str] = None,
        **kwargs,
    ):
        """
        Args:
            gpt: The fields of ``lit_vattn.model.config.GPTConfig`` (layers, heads, width, ...).
            readers: The method: a list of ``{"class_path": ..., "init_args": {...}}`` (empty: vanilla).
            vocab_size: The real vocabulary (the embedding may be padded beyond it).
            lit_vattn_version: The suite version that wrote the model.
        """
        self.gpt = dict(gpt or {})
        self.readers = list(readers or [])
        self.lit_vattn_version = lit_vattn_version
        # the names transformers' generation and tooling read (derived: the decoder's own are in ``gpt``)
        for name, key, default in (
            ("num_hidden_layers", "n_layer", 12),
            ("num_attention_heads", "n_head", 12),
            ("hidden_size", "d_model", 768),
            ("max_position_embeddings", "max_seq_len", 1024),
        ):
            kwargs.pop(name, None)
            setattr(self, name, int(self.gpt.get(key, default)))
        kwargs.setdefault("tie_word_embeddings", bool(self.gpt.get("tie_embeddings", False)))
        kwargs.setdefault("use_cache", False)  # generate() recomputes the prefix: exact for every reader
        super().__init__(vocab_size=vocab_size, **kwargs)
