"""Symbolic-music DataModule: MIDI/ABC pieces -> miditok tokens -> shards. Unit: bits per note.

Each piece becomes BOS + tokens + EOS in one stream (miditok with ``use_programs``, so all tracks
of a piece share one sequence). A note is one Pitch token (Pitch_/PitchDrum_), so the notes behind
any target are counted exactly from the token id, BPE merges included.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from datamodules import shards
from datamodules.base import SkippedFiles, TokenDataModule, report_skipped, require
from datamodules.modality import Modality
from datamodules.music_samples import MusicSamples
from datamodules.music_sources import MIDI_SUFFIXES, abc_pieces, file_pieces, score_pieces

log = logging.getLogger(__name__)

DEFAULT_TOKENIZER_OPTIONS = {
    "use_programs": True,
    "use_rests": True,
    "use_tempos": True,
    "use_time_signatures": True,
    "special_tokens": ["PAD", "BOS", "EOS"],
}


class MusicDataModule(TokenDataModule):
    name = "music"
    MODALITY = Modality("music", unit="note", label="bits/note", samples=MusicSamples, documents="pieces")
    FIX = "add MIDI files or raise data.val_fraction / data.test_fraction"

    def __init__(
        self,
        source: Literal["embedded", "full", "files"] = "embedded",
        files: Optional[list[str]] = None,
        max_pieces: Optional[int] = None,
        val_fraction: float = 0.02,
        test_fraction: float = 0.02,
        tokenizer: str = "REMI",
        tokenizer_options: Optional[dict[str, Any]] = None,
        bpe_vocab_size: Optional[int] = None,
        kern_timeout: int = 120,
        seq_len: int = 512,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 1234,
        cache_dir: Optional[str] = None,
        on_bad_file: Literal["skip", "error"] = "skip",
    ):
        """
        Args:
            source: "embedded" = music21's 12,976 ABC tunes through symusic's abc2midi (seconds);
                "full" = those plus 1,980 kern/MusicXML scores through music21 (~30 min once
                on 2 cores, cached); "files" = your MIDI files (data.files), e.g. a MAESTRO folder.
            files: MIDI files, directories or globs (source="files").
            max_pieces: Use at most this many pieces (None = all); evenly spaced over the corpus. With
                source="full", a quarter of them (at least one) are kern/MusicXML scores.
            val_fraction: Fraction held out for validation, by source file (groups of 25 adjacent
                tunes for multi-tune ABC files, so variants of one tune stay together).
            test_fraction: Fraction held out for test, likewise.
            tokenizer: Any miditok tokenizer class name: REMI, TSD, MIDILike, Structured, MMM, ...
            tokenizer_options: miditok TokenizerConfig arguments; default use_programs, rests,
                tempos, time signatures and PAD/BOS/EOS specials.
            bpe_vocab_size: Train a miditok BPE of this size on the training split (None = no BPE).
            kern_timeout: Seconds allowed to convert one kern/MusicXML score (source="full").
            seq_len: Tokens per window.
            batch_size: Windows per batch on each device.
            num_workers: DataLoader worker processes.
            seed: Seed of the training-window stream.
            cache_dir: Where shards are kept; default $LIT_VATTN_CACHE or ~/.cache/lit_vattn.
            on_bad_file: An unreadable or empty input file: "skip" it (the skipped files are listed
                after the first pass over the inputs) or stop with an "error" naming it. Hidden files
                and folders are never read.
        """
        require(["miditok", "symusic", "music21"], "music", "MusicDataModule")
        super().__init__(seq_len, batch_size, num_workers, seed, cache_dir, on_bad_file)
        if source == "files" and not files:
            raise ValueError('data.source="files" needs data.files (MIDI files, directories or globs)')
        self.source, self.files, self.max_pieces = source, files, max_pieces
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.tokenizer_name = tokenizer
        self.tokenizer_options = {**DEFAULT_TOKENIZER_OPTIONS, **(tokenizer_options or {})}
        self.bpe_vocab_size, self.kern_timeout = bpe_vocab_size, kern_timeout
        self._tok = None
        self._base_vocab = len(self._new_tokenizer())
        if source == "files":  # split the file list before any step: too few files is an error now
            keys = [k for _, k in shards.expand_files(files, "MIDI file", MIDI_SUFFIXES)][:max_pieces]
            assign = shards.split_keys(keys, val_fraction, test_fraction)
            shards.check_splits({s: list(assign.values()).count(s) for s in shards.SPLITS}, "MIDI files", self.FIX)

    def _new_tokenizer(self):
        import miditok

        cls = getattr(miditok, self.tokenizer_name, None)
        if cls is None or not isinstance(cls, type):
            raise ValueError(
                f"data.tokenizer={self.tokenizer_name!r} is not a miditok tokenizer (e.g. REMI, TSD, MIDILike)"
            )
        tok = cls(miditok.TokenizerConfig(**self.tokenizer_options))
        if isinstance(tok.vocab, list):
            raise ValueError(
                f"data.tokenizer={self.tokenizer_name!r} has several vocabularies (compound tokens); use a single-stream tokenizer"
            )
        for special in ("BOS_None", "EOS_None"):
            if special not in tok.vocab:
                raise ValueError(
                    f"data.tokenizer_options.special_tokens must include BOS and EOS (got {self.tokenizer_options.get('special_tokens')})"
                )
        return tok

    @property
    def vocab_size(self) -> int:
        return self.bpe_vocab_size or self._base_vocab

    def settings(self) -> dict:
        s = {
            "source": self.source,
            "max_pieces": self.max_pieces,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "tokenizer": {
                "kind": f"miditok.{self.tokenizer_name}",
                "options": self.tokenizer_options,
                "bpe": self.bpe_vocab_size,
                "vocab_size": self.vocab_size,
            },
        }
        if self.source == "files":  # adding, removing or editing a file under a folder gives new shards
            s["files"] = self.files_fingerprint("MIDI file", MIDI_SUFFIXES)
        return s

    @property
    def tokenizer(self):
        if self._tok is None:
            import miditok

            path = self.shard_dir / "tokenizer.json"
            if not path.exists():
                raise FileNotFoundError(f"tokenizer {path} is missing: run prepare_data/setup first")
            self._tok = getattr(miditok, self.tokenizer_name)(params=path)
        return self._tok

    def _pieces(self, skipped: list):
        if self.source == "files":
            yield from file_pieces(self.files, skipped)
            return
        n_scores = None
        if self.source == "full" and self.max_pieces is not None:
            n_scores = max(1, self.max_pieces // 4)  # a capped "full" still holds both kinds of source
        n_abc = None if self.max_pieces is None else self.max_pieces - (n_scores or 0)
        yield from abc_pieces(n_abc, skipped)
        if self.source == "full":
            yield from score_pieces(
                self.cache_dir / "music21-midi", self.kern_timeout, skipped=skipped, max_files=n_scores
            )

    def encode_score(self, score) -> list[int]:
        """A ``symusic.Score``'s token ids, as the training data's pieces were encoded."""
        return self._ids(self.tokenizer, score)

    @staticmethod
    def _ids(tok, score) -> list[int]:
        seq = tok.encode(score)
        if isinstance(seq, list):  # one sequence per track: play them one after another
            return [i for s in seq for i in s.ids]
        return seq.ids

    def write_shards(self, writer: shards.ShardWriter) -> tuple[dict, np.ndarray]:
        skipped = SkippedFiles(self.on_bad_file)
        kept = []
        for n, (key, name, score) in enumerate(self._pieces(skipped)):
            if self.max_pieces is not None and n >= self.max_pieces:
                break
            if score.note_num() == 0:
                skipped.append((name, "no notes"))
                continue
            kept.append((key, name, score))
        report_skipped(skipped, "unreadable or empty pieces")
        assign = shards.split_keys([k for k, _, _ in kept], self.val_fraction, self.test_fraction)
        pieces = {s: [] for s in shards.SPLITS}
        for key, name, score in kept:
            pieces[assign[key]].append((name, score))
        if self.source == "files" and kept:
            shards.check_splits({k: len(v) for k, v in pieces.items()}, "usable MIDI files", self.FIX)
        if not pieces["train"]:
            raise ValueError(
                f"no usable music pieces in source {self.source!r} ({len(skipped)} skipped, e.g. {skipped[:3]})"
            )
        tok = self._new_tokenizer()
        if self.bpe_vocab_size:
            with tempfile.TemporaryDirectory() as d:
                paths = []
                for i, (_, score) in enumerate(pieces["train"]):
                    p = Path(d) / f"{i}.mid"
                    score.dump_midi(str(p))
                    paths.append(p)
                tok.train(vocab_size=self.bpe_vocab_size, model="BPE", files_paths=paths)
        tok.save(writer.tmp / "tokenizer.json")
        units = self._notes_per_token(tok)
        bos, eos = tok.vocab["BOS_None"], tok.vocab["EOS_None"]
        counts = {}
        for split, items in pieces.items():
            notes = 0
            for name, score in shards.progress_iter(items, f"tokenizing {split} pieces"):
                ids = self._ids(tok, score)
                if not ids:
                    skipped.append((name, "no tokens"))
                    continue
                writer.add(split, [bos, *ids, eos])
                notes += int(units[np.asarray(ids)].sum())
            counts[split] = notes
        self._tok = tok
        return {
            "tokenizer": self.settings()["tokenizer"],
            "unit_counts": counts,
            "skipped": len(skipped),
            "bos_id": bos,
            "eos_id": eos,
        }, units

    def _notes_per_token(self, tok) -> np.ndarray:
        units = np.zeros(self.vocab_size)
        is_note = lambda t: t.startswith("Pitch_") or t.startswith("PitchDrum_")  # noqa: E731
        if tok.is_trained:
            for byte_tok, i in tok.vocab_model.items():
                units[i] = sum(is_note(t) for t in tok._vocab_learned_bytes_to_tokens[byte_tok])
        else:
            for t, i in tok.vocab.items():
                units[i] = is_note(t)
        return units

    def decode(self, ids):
        """Token ids (specials allowed) -> symusic.Score; ``to_midi`` writes it to a file."""
        tok = self.tokenizer
        specials = {tok.vocab[s] for s in ("PAD_None", "BOS_None", "EOS_None") if s in tok.vocab}
        return tok.decode([int(i) for i in ids if int(i) not in specials])

    def to_midi(self, ids, path: str) -> Path:
        out = Path(path)
        tmp = out.with_suffix(".tmp.mid")
        self.decode(ids).dump_midi(str(tmp))
        tmp.replace(out)
        return out
