"""Text DataModule: the embedded corpus, local text files or any HF dataset id -> BPE token shards.

Unit: bits per byte (UTF-8 bytes of the target tokens), comparable across tokenizers.
Documents are separated by <|endoftext|>; splits are by document (hash of its key), never by offset,
unless an HF dataset brings its own train/validation/test splits. Every source is read as a stream and
tokenized in batches straight into the shard files, so a corpus larger than memory prepares in bounded
memory (``write_shards``).
"""

from __future__ import annotations

import logging
import os
import time
from itertools import islice
from typing import Iterator, Literal, Optional

import numpy as np

from datamodules import shards
from datamodules.base import SkippedFiles, TokenDataModule, report_skipped
from datamodules.modality import Modality
from datamodules.text_samples import TextSamples
from datamodules.text_sources import embedded_documents, file_documents, hf_documents
from datamodules.text_tokenizers import GPT2Tokenizer, TrainedBPE

BATCH_CHARS = 1 << 24  # characters per tokenizer batch: bounds memory where documents are whole books
CHECKPOINT_SECONDS = 60  # how often a long preparation saves where it is: a killed one resumes from there
log = logging.getLogger(__name__)


class TextDataModule(TokenDataModule):
    name = "text"
    MODALITY = Modality("text", unit="byte", label="bits/byte", samples=TextSamples)

    def __init__(
        self,
        source: str = "embedded",
        files: Optional[list[str]] = None,
        hf_config: Optional[str] = None,
        text_column: str = "text",
        hf_document: Literal["row", "wikitext_article"] = "row",
        streaming: bool = False,
        sample_by: Literal["document", "paragraph"] = "document",
        max_documents: Optional[int] = None,
        val_fraction: float = 0.01,
        test_fraction: float = 0.01,
        tokenizer: Literal["gpt2", "bpe"] = "gpt2",
        bpe_vocab_size: int = 8192,
        seq_len: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 1234,
        cache_dir: Optional[str] = None,
        on_bad_file: Literal["skip", "error"] = "skip",
    ):
        """
        Args:
            source: "embedded" (GCIDE dictionary + King James Bible, pip-installed), "files" (use
                data.files), or an HF hub dataset id such as "Salesforce/wikitext".
            files: Local UTF-8 text files, directories or globs (with source="files").
            hf_config: HF dataset configuration name, e.g. "wikitext-103-raw-v1".
            text_column: Column holding the text in an HF dataset.
            hf_document: What one document of an HF dataset is: a "row", or a "wikitext_article"
                (WikiText's rows are its lines; an article starts at a " = Title = " line).
            streaming: Read the HF dataset from the hub while tokenizing instead of downloading it
                whole first (for corpora larger than the disk allows twice). Either way documents are
                tokenized in batches straight into the shards: memory does not grow with the corpus.
            sample_by: For local files: one document per file, or per blank-line separated paragraph.
            max_documents: Use at most this many documents per source split (None = all).
            val_fraction: Fraction of documents held out for validation (hash split by document).
            test_fraction: Fraction of documents held out for test (hash split by document).
            tokenizer: "gpt2" = the real GPT-2 BPE (50,257 ids, offline); "bpe" = train a byte-level
                BPE with HF tokenizers on the training split.
            bpe_vocab_size: Vocabulary size of the trained BPE (tokenizer="bpe").
            seq_len: Tokens per window (context length T).
            batch_size: Windows per batch on each device.
            num_workers: DataLoader worker processes.
            seed: Seed of the training-window stream.
            cache_dir: Where shards are kept; default $LIT_VATTN_CACHE or ~/.cache/lit_vattn.
            on_bad_file: An unreadable or empty input file: "skip" it (the skipped files are listed
                after the first pass over the inputs) or stop with an "error" naming it. Hidden files
                and folders are never read.
        """
        super().__init__(seq_len, batch_size, num_workers, seed, cache_dir, on_bad_file)
        if source == "files" and not files:
            raise ValueError('data.source="files" needs data.files (paths, directories or globs of text files)')
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in (0, 1) and sum below 1"
            )
        self.source, self.files, self.hf_config = source, files, hf_config
        self.text_column, self.streaming, self.sample_by = text_column, streaming, sample_by
        self.hf_document = hf_document
        self.max_documents = max_documents
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.tokenizer_kind, self.bpe_vocab_size = tokenizer, bpe_vocab_size
        self._tok = None
        if source == "files" and sample_by == "document":  # too few files for three splits: say so before any step
            keys = [k for _, k in shards.expand_files(files, "text file")][:max_documents]
            assign = shards.split_keys(keys, val_fraction, test_fraction)
            shards.check_splits(
                {s: list(assign.values()).count(s) for s in shards.SPLITS},
                "text files (data.files)",
                "add files, raise data.val_fraction / data.test_fraction, or use data.sample_by=paragraph",
            )
        elif source == "files":
            shards.expand_files(files, "text file")  # a missing path or an empty folder: an error now

    @property
    def vocab_size(self) -> int:
        return GPT2Tokenizer.vocab_size if self.tokenizer_kind == "gpt2" else self.bpe_vocab_size

    def settings(self) -> dict:
        s = {
            "source": self.source,
            "max_documents": self.max_documents,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "tokenizer": {"kind": self.tokenizer_kind, "vocab_size": self.vocab_size},
        }
        if self.source == "files":  # adding, removing or editing a file under a folder or glob gives new shards
            s["files"] = self.files_fingerprint("text file")
            s["sample_by"] = self.sample_by
        elif self.source != "embedded":
            s.update(hf_config=self.hf_config, text_column=self.text_column)
            if self.hf_document != "row":  # so that shards prepared before this option keep their key
                s["hf_document"] = self.hf_document
            if os.path.isdir(self.source):  # a local dataset folder: editing its files gives new shards
                s["files"] = self.files_fingerprint("dataset file", patterns=[self.source])
        return s

    @property
    def tokenizer(self):
        if self._tok is None:
            if self.tokenizer_kind == "gpt2":
                self._tok = GPT2Tokenizer()
            else:
                path = self.shard_dir / "tokenizer.json"
                if not path.exists():
                    raise FileNotFoundError(f"trained BPE {path} is missing: run prepare_data/setup first")
                self._tok = TrainedBPE(self.bpe_vocab_size, path)
        return self._tok

    def _documents(self, skipped: list) -> dict:
        if self.source == "embedded":
            docs = {"all": embedded_documents()}
        elif self.source == "files":
            docs = {"all": file_documents(self.files, self.sample_by, skipped)}
        else:
            docs = hf_documents(
                self.source, self.hf_config, self.text_column, self.streaming, self.max_documents, self.hf_document
            )
        if self.max_documents is not None:
            docs = {k: islice(v, self.max_documents) for k, v in docs.items()}
        return docs

    def _stream(self, splitter: shards.KeySplitter, skipped: list) -> Iterator[tuple[str, Optional[str], str]]:
        """(split, key, text) of every document in source order, read lazily: a source's own split
        (key None), or the split of the document's key."""
        for split, docs in self._documents(skipped).items():
            for key, text in docs:
                yield (splitter.assign(key), key, text) if split == "all" else (split, None, text)

    def _splitter(self) -> shards.KeySplitter:
        return shards.KeySplitter(self.val_fraction, self.test_fraction)

    def _check(self, documents: dict, skipped: list, report: bool = True) -> None:
        if report:
            report_skipped(skipped, "unreadable or empty text files")
        if not any(documents.values()):
            raise ValueError(
                f"text source {self.source!r} produced no non-empty documents"
                f"{f' ({len(skipped)} files skipped, e.g. {skipped[:3]})' if skipped else ''}"
            )
        shards.check_splits(
            documents,
            "documents",
            "add documents, raise data.val_fraction / data.test_fraction, or use "
            "data.sample_by=paragraph (one document per paragraph instead of per file)",
        )

    def _training_texts(self) -> Iterator[str]:
        """The training split's texts for the BPE trainer, streamed. The two lowest-hashing train
        documents are held back until the end, since the small-source rule may move them to val or
        test (BPE merges depend on word counts only, not on their order). The splits are checked
        when the stream ends, before the trainer merges."""
        splitter, skipped = self._splitter(), SkippedFiles(self.on_bad_file)
        held: dict[str, list[str]] = {}
        documents = dict.fromkeys(shards.SPLITS, 0)
        for split, key, text in self._stream(splitter, skipped):
            documents[split] += 1
            if split != "train":
                continue
            if key is not None and splitter.may_move(key):
                held.setdefault(key, []).append(text)
            else:
                yield text
            for k in [k for k in held if not splitter.may_move(k)]:
                yield from held.pop(k)
        moves = splitter.moves()
        for key, texts in held.items():
            if key in moves:
                documents["train"] -= len(texts)
                documents[moves[key]] += len(texts)
            else:
                yield from texts
        self._check(documents, skipped, report=False)  # the writing pass reports the skipped files

    def write_shards(self, writer: shards.ShardWriter) -> tuple[dict, np.ndarray]:
        """One pass over the source (two with a trained BPE: the first trains it), tokenizing batches
        of documents straight into the shard files: memory holds one batch, whatever the corpus size.
        Every ``CHECKPOINT_SECONDS`` the writer saves how many documents are written; a preparation
        killed after that resumes there (the documents before it are read again, not tokenized)."""
        resumed = writer.resumed or {}
        if self.tokenizer_kind == "bpe" and resumed:
            tok = TrainedBPE(self.bpe_vocab_size, writer.tmp / "tokenizer.json")  # trained before the checkpoint
        elif self.tokenizer_kind == "bpe":
            tok = TrainedBPE(self.bpe_vocab_size)
            tok.train(self._training_texts())
            tok.save(writer.tmp / "tokenizer.json")
        else:
            tok = GPT2Tokenizer()
        splitter, skipped = self._splitter(), SkippedFiles(self.on_bad_file)
        read = resumed.get("read", 0)  # documents written before the checkpoint
        n_bytes = resumed.get("n_bytes", dict.fromkeys(shards.SPLITS, 0))
        # train documents the small-source rule may still move: key -> [(start, tokens, bytes)]
        ranges = {k: [tuple(r) for r in v] for k, v in resumed.get("ranges", {}).items()}
        docs = self._stream(splitter, skipped)
        if read:  # read them again, splitting but not tokenizing: the splitter is where it was
            log.info("resuming the preparation of %s after %d documents", writer.final_dir, read)
            for _ in islice(docs, read):
                pass
        saved = time.monotonic()
        with shards.progress(None, "tokenizing documents") as bar:
            bar.update(read)
            for batch in shards.batched(docs, 4096, size=lambda d: len(d[2]), max_size=BATCH_CHARS):
                for (split, key, text), ids in zip(batch, tok.encode_batch([t for _, _, t in batch])):
                    size = len(text.encode("utf-8"))
                    if split == "train" and key is not None and splitter.may_move(key):
                        ranges.setdefault(key, []).append((writer.tokens["train"], len(ids) + 1, size))
                    writer.add(split, ids + [tok.eot_id])
                    n_bytes[split] += size
                ranges = {k: v for k, v in ranges.items() if splitter.may_move(k)}
                read += len(batch)
                bar.update(len(batch))
                if time.monotonic() - saved >= CHECKPOINT_SECONDS:
                    writer.checkpoint({"read": read, "n_bytes": n_bytes, "ranges": ranges})
                    saved = time.monotonic()
        moves: dict[str, list[tuple[int, int]]] = {}
        for key, dst in splitter.moves().items():
            moves.setdefault(dst, []).extend((start, n) for start, n, _ in ranges[key])
            moved = sum(b for _, _, b in ranges[key])
            n_bytes["train"] -= moved
            n_bytes[dst] += moved
        writer.move_documents("train", moves)
        self._check(dict(writer.documents), skipped)
        self._tok = tok
        meta = {"tokenizer": tok.spec(), "eot_id": tok.eot_id, "unit_counts": n_bytes}
        return meta, tok.token_bytes()

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)
