"""The DataModule every modality shares: shards prepared once, memory-mapped, resumable stream.

A modality subclass says what decides its token stream (``settings``), how big its vocabulary is
before any data is read (``vocab_size``, linked to the model by the CLI) and how to turn its source
into tokenized documents (``write_shards``). Everything else (caching, atomic writes, windows,
DDP slicing, exact resume) lives here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules import shards
from datamodules.modality import DataContract, Modality
from datamodules.windows import EvalWindows, ResumableSampler, TrainWindows, window_documents

log = logging.getLogger(__name__)


class SkippedFiles(list):
    """(name, reason) of each input skipped as unreadable or empty, reported after the first pass
    (``report_skipped``). With ``on_bad_file="error"`` the first one is an error that names the
    file and the option instead, raised in the first pass over the inputs, before a trained
    tokenizer merges or any shard is committed."""

    def __init__(self, on_bad_file: str = "skip"):
        super().__init__()
        if on_bad_file not in ("skip", "error"):
            raise ValueError(f"data.on_bad_file must be 'skip' or 'error', got {on_bad_file!r}")
        self.on_bad_file = on_bad_file

    def append(self, item: tuple[str, str]) -> None:
        if self.on_bad_file == "error":
            name, why = item
            raise ValueError(
                f"input {name!r} cannot be used: {why}; fix or remove it, or set data.on_bad_file=skip "
                "to skip unreadable files and list them"
            )
        super().append(item)


def report_skipped(skipped: list, what: str) -> None:
    if skipped:
        names = ", ".join(f"{n} ({why[:60]})" for n, why in skipped[:5])
        log.warning("skipped %d %s: %s%s", len(skipped), what, names, ", ..." if len(skipped) > 5 else "")


class StreamDataModule(pl.LightningDataModule):
    """What every DataModule of the suite shares, whether its tokens come from shards or are
    generated (the probes): each rank's slice of the stream, the loaders, and the count of training
    samples consumed that makes resuming continue the same stream (``consumed``, saved by the
    subclass's ``state_dict``)."""

    consumed: int = 0  # training samples this rank has taken from the stream
    MODALITY: Optional[Modality] = None  # a DataModule of one modality declares it here

    @classmethod
    def modalities(cls) -> list[Modality]:
        """Every modality this class can produce (``datamodules.modality.modalities`` collects them)."""
        return [cls.MODALITY] if cls.__dict__.get("MODALITY") else []

    @classmethod
    def modality_for(cls, init_args: dict) -> Modality:
        """The modality an instance built with ``init_args`` produces (for run names, before building it)."""
        if cls.MODALITY is None:
            raise TypeError(f"{cls.__name__} declares no MODALITY")
        return cls.MODALITY

    @property
    def modality(self) -> Modality:
        return self.modality_for({})

    def contract(self) -> DataContract:
        """What this data promises the model it feeds (read at the model's setup, after ``setup``)."""
        raise TypeError(
            f"{type(self).__name__} declares no data contract: define contract() returning a "
            "datamodules.modality.DataContract (TokenDataModule and ProbeDataModule do)"
        )

    def check_sampler(self) -> None:
        """The streams slice themselves per rank: Lightning's distributed sampler must stay off."""
        t = self.trainer
        if t is not None and t.world_size > 1 and t._accelerator_connector.use_distributed_sampler:
            raise ValueError(
                "trainer.use_distributed_sampler must be false: the DataModule already gives each rank "
                "disjoint training windows and unpadded evaluation slices (Lightning's sampler would pad)"
            )

    def stream_state(self) -> dict:
        """Where this rank is in the training stream, for the checkpoint."""
        return {"consumed": self.consumed, "world_size": self._rank_world[1]}

    def restore_stream(self, state: dict) -> None:
        """Continue the stream a checkpoint left. Rank r of W draws windows r, r + W, r + 2W, ...,
        so a per-rank count means the same place in the stream only under the same number of
        processes: resuming training under another number is refused, naming both (a checkpoint
        written before the world size was saved is taken to match). Evaluation reads no training
        stream: ``validate`` and ``test`` run a checkpoint on any number."""
        saved, now = int(state.get("world_size", self._rank_world[1])), self._rank_world[1]
        t = self.trainer
        if saved != now and t is not None and t.state.fn == "fit":
            raise ValueError(
                f"the checkpoint was trained by {saved} process(es) and this run has {now}: the data stream "
                "(rank r of W takes windows r, r + W, ...) continues exactly only under the same number; resume with "
                f"--trainer.devices x --trainer.num_nodes = {saved}, or start a new run"
            )
        self.consumed = int(state.get("consumed", 0))

    @property
    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, ds, sampler=None) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=sampler is not None,
            persistent_workers=self.num_workers > 0,
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            self.consumed += batch["input"].shape[0]
        return batch


class TokenDataModule(StreamDataModule):
    name = "tokens"  # the shard directory's prefix
    rebuilds_exactly = True
    """Whether preparing these shards again, on any machine, gives the same tokens (the same digest).
    Where not, ``lit-vattn-reproduce --records`` keeps the token shards with the records
    (``records.keep_data``), so a table's runs can be added to on another machine."""

    @property
    def unit(self) -> str:
        """The comparable unit of the NLL: byte / second / note (``MODALITY``)."""
        return self.modality.unit

    def contract(self) -> DataContract:
        return DataContract(self.seq_len, self.batch_size, self.unit, self.units_per_token, report_accuracy=False)

    def __init__(
        self,
        seq_len: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 1234,
        cache_dir: Optional[str] = None,
        on_bad_file: str = "skip",
    ):
        """
        Args:
            seq_len: Tokens per training/evaluation window (the model's context length T).
            batch_size: Windows per batch on each device.
            num_workers: DataLoader worker processes.
            seed: Seed of the training-window stream (independent of the model's init seed).
            cache_dir: Where token shards are kept; default $LIT_VATTN_CACHE or ~/.cache/lit_vattn.
            on_bad_file: "skip" (list them) or "error" for unreadable or empty input files.
        """
        super().__init__()
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1 (got {seq_len}, {batch_size})")
        self.seq_len, self.batch_size, self.num_workers, self.seed = seq_len, batch_size, num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else shards.default_cache_dir()
        shards.check_cache_dir(self.cache_dir)
        self.on_bad_file = on_bad_file
        SkippedFiles(on_bad_file)  # checks the value now, not after the model is built
        self.consumed = 0  # training samples this rank has taken from the stream
        self.meta: Optional[dict] = None
        self._data: dict[str, np.ndarray] = {}

    # --- what a modality provides ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def settings(self) -> dict:
        """Everything that decides the token stream; hashed into the shard directory name."""
        raise NotImplementedError

    def write_shards(self, writer: shards.ShardWriter) -> tuple[dict, np.ndarray]:
        """Tokenize the source into ``writer``; return (extra meta, units per token id)."""
        raise NotImplementedError

    # --- shards ------------------------------------------------------------------------------------
    @property
    def shard_dir(self) -> Path:
        return self.cache_dir / f"{self.name}-{shards.cache_key(self.settings())}"

    def prepare_data(self) -> None:
        """Tokenize once (Lightning calls this on local rank 0; the other ranks wait). Separate
        processes asking for the same shards at once take turns: the first writes them, the
        others wait on its lock and then read them (``shards.preparing``)."""
        if shards.is_complete(self.shard_dir):
            return
        shards.check_cache_dir(self.cache_dir, writable=True)
        with shards.preparing(self.shard_dir, log):
            if shards.is_complete(self.shard_dir):  # written while this process waited
                return
            log.info("preparing %s shards in %s", self.name, self.shard_dir)
            writer = shards.ShardWriter(self.shard_dir, self.vocab_size)
            try:
                meta, units = self.write_shards(writer)
            except Exception:
                writer.abort()
                raise
            except BaseException:  # Ctrl-C: a checkpointed preparation resumes next time
                writer.stop()
                raise
            writer.commit({"source": self.name, "settings": self.settings(), "unit": self.unit, **meta}, units)

    def setup(self, stage: Optional[str] = None) -> None:
        if not shards.is_complete(self.shard_dir):
            self.prepare_data()  # used outside a Trainer, or prepare_data_per_node on a fresh node
        self.meta = shards.load_meta(self.shard_dir)
        if self.meta["vocab_size"] != self.vocab_size:
            raise ValueError(
                f"shards in {self.shard_dir} have vocabulary {self.meta['vocab_size']} but the data settings "
                f"give {self.vocab_size}; delete that directory to rebuild it"
            )
        self._data = {s: shards.open_split(self.shard_dir, s) for s in shards.SPLITS}
        self.units_per_token = torch.from_numpy(shards.load_units(self.shard_dir))
        self.data_digest = shards.digest(self.shard_dir)  # recorded with every run: tables refuse mixed data
        self.check_sampler()

    # --- loaders -----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world
        ds = TrainWindows(self._data["train"], self.seq_len, self.seed, rank, world)
        if len(ds) < self.batch_size:  # Lightning would stop at once with "No training batches", having trained nothing
            raise ValueError(
                f"the training split has {ds.n} windows of data.seq_len={self.seq_len} ({len(ds)} per process), "
                f"fewer than one batch (data.batch_size={self.batch_size}): lower data.batch_size or "
                "data.seq_len, or add data"
            )
        return self._loader(ds, ResumableSampler(len(ds), lambda: self.consumed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(EvalWindows(self._data["val"], self.seq_len, *self._rank_world))

    def test_dataloader(self) -> DataLoader:
        return self._loader(EvalWindows(self._data["test"], self.seq_len, *self._rank_world))

    def test_documents(self) -> Optional[dict[int, int]]:
        """{test window start: document number}, from the end-of-document id the shards' meta
        names (text ``eot_id``, music and audio ``eos_id``); None where the data have none."""
        end = (self.meta or {}).get("eot_id", (self.meta or {}).get("eos_id"))
        return None if end is None else window_documents(self._data["test"], self.seq_len, int(end))

    # --- tokenizer identity --------------------------------------------------------------------------
    TOKENIZER_FILES = ("tokenizer.json", "codec.pt")  # trained tokenizers / codecs saved with the shards

    def tokenizer_identity(self) -> dict:
        """What makes token ids mean the same thing: the tokenizer settings plus the sha256 of every
        tokenizer file saved with the shards (a trained BPE, a miditok vocabulary, a codec). Two
        tokenizers of the same kind and size trained on different data differ here."""
        import hashlib

        shard_dir = self.shard_dir
        cached = getattr(self, "_identity", None)
        if cached is not None and cached[0] == shard_dir:  # hashed once per shard directory (every save asks)
            return cached[1]
        ident = {"settings": self.settings().get("tokenizer")}
        for name in self.TOKENIZER_FILES:
            f = shard_dir / name
            if f.is_file():
                ident[name] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        if shards.is_complete(shard_dir):  # before preparation the tokenizer files do not exist yet
            self._identity = (shard_dir, ident)
        return ident

    def files_fingerprint(self, what: str, suffixes=None, patterns: Optional[list[str]] = None) -> str:
        """``shards.fingerprint`` of ``data.files`` (or of ``patterns``), computed once per DataModule (a
        folder is walked and stat'ed once, not at every checkpoint that asks for the settings)."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            found = shards.expand_files(patterns or self.files, what, suffixes)
            cached = self._fingerprint = shards.fingerprint(found)
        return cached

    # --- checkpoint --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            **self.stream_state(),
            "seed": self.seed,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "shard_key": self.shard_dir.name,
            "tokenizer": self.settings().get("tokenizer"),
            "tokenizer_identity": self.tokenizer_identity(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("seq_len", self.seq_len) != self.seq_len:
            log.warning("resuming with a different data seed or seq_len: the training stream changes")
        self.restore_stream(state)

    def decode(self, ids) -> str:
        raise NotImplementedError


def require(modules: list[str], extra: str, who: str) -> None:
    """Fail at construction, naming the install command, when an optional stack is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f'{who} needs {", ".join(missing)}: pip install -e ".[{extra}]" (or pip install -e ".[dev]" for everything)'
        )
