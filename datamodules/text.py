"""Text DataModule: the embedded corpus, local text files or any HF dataset id -> BPE token shards.

Unit: bits per byte (UTF-8 bytes of the target tokens), comparable across tokenizers.
Documents are separated by <|endoftext|>; splits are by document (hash of its key), never by offset,
unless an HF dataset brings its own train/validation/test splits.
"""

from __future__ import annotations

from itertools import islice
from typing import Literal, Optional

import numpy as np

from datamodules import shards
from datamodules.base import SkippedFiles, TokenDataModule, report_skipped
from datamodules.modality import Modality
from datamodules.text_samples import TextSamples
from datamodules.text_sources import embedded_documents, file_documents, hf_documents
from datamodules.text_tokenizers import GPT2Tokenizer, TrainedBPE


class TextDataModule(TokenDataModule):
    name = "text"
    MODALITY = Modality("text", unit="byte", label="bits/byte", samples=TextSamples)

    def __init__(
        self,
        source: str = "embedded",
        files: Optional[list[str]] = None,
        hf_config: Optional[str] = None,
        text_column: str = "text",
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
            streaming: Stream the HF dataset instead of downloading it whole (for large corpora).
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
            docs = hf_documents(self.source, self.hf_config, self.text_column, self.streaming, self.max_documents)
        if self.max_documents is not None:
            docs = {k: islice(v, self.max_documents) for k, v in docs.items()}
        return docs

    def _split_docs(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {s: [] for s in shards.SPLITS}
        skipped = SkippedFiles(self.on_bad_file)
        for split, docs in self._documents(skipped).items():
            if split != "all":  # the source's own split
                out[split] += [text for _, text in docs]
                continue
            docs = list(docs)
            assign = shards.split_keys([k for k, _ in docs], self.val_fraction, self.test_fraction)
            for key, text in docs:
                out[assign[key]].append(text)
        report_skipped(skipped, "unreadable or empty text files")
        if not any(out.values()):
            raise ValueError(
                f"text source {self.source!r} produced no non-empty documents"
                f"{f' ({len(skipped)} files skipped, e.g. {skipped[:3]})' if skipped else ''}"
            )
        # before the tokenizer is trained or anything is encoded
        shards.check_splits(
            {k: len(v) for k, v in out.items()},
            "documents",
            "add documents, raise data.val_fraction / data.test_fraction, or use "
            "data.sample_by=paragraph (one document per paragraph instead of per file)",
        )
        return out

    def write_shards(self, writer: shards.ShardWriter) -> tuple[dict, np.ndarray]:
        docs = self._split_docs()
        if self.tokenizer_kind == "bpe":
            tok = TrainedBPE(self.bpe_vocab_size)
            tok.train(docs["train"])
            tok.save(writer.tmp / "tokenizer.json")
        else:
            tok = GPT2Tokenizer()
        units = tok.token_bytes()
        unit_counts = {}
        for split, texts in docs.items():
            n_bytes = 0
            with shards.progress(len(texts), f"tokenizing {split} documents") as bar:
                for batch in shards.batched(texts, 4096):
                    for ids in tok.encode_batch(batch):
                        writer.add(split, ids + [tok.eot_id])
                    n_bytes += sum(len(t.encode("utf-8")) for t in batch)
                    bar.update(len(batch))
            unit_counts[split] = n_bytes
        self._tok = tok
        meta = {"tokenizer": tok.spec(), "eot_id": tok.eot_id, "unit_counts": unit_counts}
        return meta, units

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)
