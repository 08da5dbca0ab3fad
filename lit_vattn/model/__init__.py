"""The decoder every method shares: its shape (``config``), the blocks (``decoder``), the attention
kernels, RoPE, the depth memory and KV cache the readers read, and the FLOP count."""

from lit_vattn.model.config import GPTConfig

__all__ = ["GPT", "GPTConfig"]


def __getattr__(name):  # the decoder imports the readers, which import this package's kernels: load it on demand
    if name == "GPT":
        from lit_vattn.model.decoder import GPT

        return GPT
    raise AttributeError(name)
