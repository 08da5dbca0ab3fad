"""Acoustic-token DataModule: audio -> EnCodec codes -> one flat stream. Unit: bits per second.

Codes are flattened frame by frame: codebook k of frame f sits at position f * n_q + k with id
k * 1024 + code, so every codebook has its own id range; utterances/tracks are separated by an EOS
token (id n_q * 1024). At 6 kbps that is 8 codebooks x 75 frames/s = 600 tokens per second of audio,
so a target code token carries 1/600 s and bits per second = NLL bits / seconds of the targets.

The codec is saved with the shards (``codec.pt``, checksum in meta.json), so every run on these
shards reads the same tokens, and ``decode``/``to_wav`` turn tokens back into audio through it.
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

import numpy as np
import torch

from datamodules import codec, shards
from datamodules.acoustic_samples import AcousticSamples
from datamodules.audio_sources import (
    AUDIO_SUFFIXES,
    file_clips,
    hf_clips,
    rendered_music_clips,
    select_files,
    speech_clips,
)
from datamodules.base import SkippedFiles, TokenDataModule, report_skipped, require
from datamodules.modality import Modality
from lit_vattn.io import atomic_path

log = logging.getLogger(__name__)


class AcousticDataModule(TokenDataModule):
    name = "acoustic"
    MODALITY = Modality("acoustic", unit="second", label="bits/s", samples=AcousticSamples, documents="utterances")
    # libespeak-ng is not bit-for-bit deterministic, and the codec's float arithmetic (and so its k-means
    # codebooks and every code) may differ with the CPU it runs on
    rebuilds_exactly = False

    def __init__(
        self,
        source: Literal["speech", "music", "files"] | str = "speech",
        files: Optional[list[str]] = None,
        hf_config: Optional[str] = None,
        hf_split: str = "train",
        audio_column: str = "audio",
        seconds: Optional[float] = 1800.0,
        max_clips: Optional[int] = None,
        min_seconds: float = 0.5,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        bandwidth: float = 6.0,
        codec_weights: str = "auto",
        kmeans_seconds: float = 300.0,
        codec_seed: int = 0,
        codec_backend: Literal["transformers", "encodec"] = "transformers",
        seq_len: int = 1200,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 1234,
        cache_dir: Optional[str] = None,
        on_bad_file: Literal["skip", "error"] = "skip",
    ):
        """
        Args:
            source: "speech" = the embedded text corpus read by espeak-ng (offline, any amount);
                "music" = the embedded MIDI corpus rendered with a General MIDI soundfont;
                "files" = your audio files (data.files); or an HF audio dataset id such as
                "openslr/librispeech_asr" (with hf_config / hf_split).
            files: Audio files, directories or globs (source="files").
            hf_config: HF dataset configuration, e.g. "clean".
            hf_split: HF dataset split to read, e.g. "train.100".
            audio_column: Column holding the audio in an HF dataset.
            seconds: Seconds of audio: synthesised or rendered (speech / music), or at most this much
                read from files (a seeded even selection over the folder, chosen from the files'
                headers before any is decoded) or from an HF dataset (None = all of it).
            max_clips: Use at most this many clips (None = all); chosen before decoding, as seconds.
            min_seconds: Clips shorter than this are skipped (and reported).
            val_fraction: Fraction of clips held out for validation (by utterance/track).
            test_fraction: Fraction of clips held out for test.
            bandwidth: EnCodec bandwidth in kbps: 1.5, 3, 6 (8 codebooks), 12 or 24. With random
                weights keep <= 6 (deeper levels collapse).
            codec_weights: "auto" = the pretrained 24 kHz model if its weights are in torch hub's
                cache, else random; "pretrained"; "random" = seeded random weights with codebooks
                initialised by k-means on training audio; a checkpoint path (Meta's format); or a
                transformers EnCodec (Hub id "facebook/encodec_24khz" or a local directory).
            kmeans_seconds: Seconds of training audio the random codec's k-means uses.
            codec_seed: Seed of the random codec's weights and k-means.
            codec_backend: The EnCodec implementation: "transformers" (installed with the audio
                extra) or Meta's "encodec" package (pip install --no-deps encodec einops). The
                same weights give the same codes in both, so the shards do not depend on it.
            seq_len: Tokens per window (600 tokens = 1 s at 6 kbps).
            batch_size: Windows per batch on each device.
            num_workers: DataLoader worker processes.
            seed: Seed of the training-window stream.
            cache_dir: Where shards are kept; default $LIT_VATTN_CACHE or ~/.cache/lit_vattn.
            on_bad_file: An unreadable or empty input file: "skip" it (the skipped files are listed
                after the first pass over the inputs) or stop with an "error" naming it. Hidden files
                and folders are never read.
        """
        require(["soundfile", "soxr", "espeakng_loader", "symusic", "transformers"], "audio", "AcousticDataModule")
        super().__init__(seq_len, batch_size, num_workers, seed, cache_dir, on_bad_file)
        if bandwidth not in codec.N_Q:
            raise ValueError(f"data.bandwidth={bandwidth} must be one of {sorted(codec.N_Q)} kbps")
        if source == "files" and not files:
            raise ValueError('data.source="files" needs data.files (audio files, directories or globs)')
        self.source, self.files, self.hf_config, self.hf_split = source, files, hf_config, hf_split
        if seconds is None and source in ("speech", "music"):
            raise ValueError(
                f"data.seconds must be a number for source={source!r}: it is the amount of audio to synthesise"
            )
        # floats as the CLI parses them, so the shard cache key of seconds=150 from Python equals that of
        # --data.init_args.seconds 150 (150.0): the same data is never prepared twice
        seconds = None if seconds is None else float(seconds)
        min_seconds, val_fraction, test_fraction = float(min_seconds), float(val_fraction), float(test_fraction)
        bandwidth, kmeans_seconds = float(bandwidth), float(kmeans_seconds)
        self.audio_column, self.seconds, self.max_clips, self.min_seconds = (
            audio_column,
            seconds,
            max_clips,
            min_seconds,
        )
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.bandwidth, self.n_q = bandwidth, codec.N_Q[bandwidth]
        if codec_weights == "auto":
            codec_weights = "pretrained" if codec.pretrained_path() is not None else "random"
            if codec_weights == "random":
                log.warning(
                    "no pretrained EnCodec weights in the torch hub cache: using a random codec with k-means codebooks"
                )
        if codec_backend not in codec.BACKENDS:
            raise ValueError(f"data.codec_backend={codec_backend!r} must be one of {codec.BACKENDS}")
        self.codec_weights, self.kmeans_seconds, self.codec_seed = codec_weights, kmeans_seconds, codec_seed
        self.codec_backend = codec_backend
        self._codec = None

    @property
    def vocab_size(self) -> int:
        return self.n_q * codec.BINS + 1  # + EOS

    @property
    def eos_id(self) -> int:
        return self.n_q * codec.BINS

    def settings(self) -> dict:
        s = {
            "source": self.source,
            "seconds": self.seconds,
            "max_clips": self.max_clips,
            "min_seconds": self.min_seconds,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "tokenizer": {
                "kind": "encodec_24khz",
                "bandwidth": self.bandwidth,
                "weights": self.codec_weights,
                "vocab_size": self.vocab_size,
            },
        }
        if self.codec_weights == "random":
            s["tokenizer"].update(kmeans_seconds=self.kmeans_seconds, seed=self.codec_seed)
        if self.source == "files":  # adding, removing or editing a file under a folder gives new shards
            s["files"] = self.files_fingerprint("audio file", AUDIO_SUFFIXES)
        elif self.source not in ("speech", "music"):
            s.update(hf_config=self.hf_config, hf_split=self.hf_split, audio_column=self.audio_column)
        return s

    def _clips(self, skipped: list):
        if self.source == "speech":
            return speech_clips(self.seconds, seed=self.codec_seed)
        if self.source == "music":
            return rendered_music_clips(self.seconds, skipped=skipped)
        if self.source == "files":
            return file_clips(self._selected, skipped)
        return hf_clips(self.source, self.hf_config, self.hf_split, self.audio_column, self.max_clips, skipped)

    def write_shards(self, writer: shards.ShardWriter) -> tuple[dict, np.ndarray]:
        skipped = SkippedFiles(self.on_bad_file)
        fix = (
            "add audio files, raise data.seconds / data.max_clips (they cap what is read), or raise "
            "data.val_fraction / data.test_fraction"
        )
        assign = None
        if self.source == "files":  # choose and split the files before decoding any (and before k-means)
            self._selected = select_files(self.files, self.seconds, self.max_clips, self.codec_seed, skipped)
            assign = shards.split_keys([k for _, k in self._selected], self.val_fraction, self.test_fraction)
            shards.check_splits({s: list(assign.values()).count(s) for s in shards.SPLITS}, "audio files", fix)
        clips = {s: [] for s in shards.SPLITS}
        read = 0.0
        for n, (key, name, wav) in enumerate(self._clips(skipped)):
            if self.max_clips is not None and n >= self.max_clips:
                break
            if self.source not in ("speech", "music", "files") and self.seconds is not None and read >= self.seconds:
                break  # an HF dataset is streamed: stop once data.seconds are read
            read += len(wav) / codec.SAMPLE_RATE
            if len(wav) < self.min_seconds * codec.SAMPLE_RATE:
                skipped.append(
                    (name, f"too short ({len(wav) / codec.SAMPLE_RATE:.2f} s < min_seconds={self.min_seconds})")
                )
            elif not np.isfinite(wav).all() or np.abs(wav).max() < 1e-4:
                skipped.append((name, "silent"))
            else:
                split = (
                    assign[key] if assign is not None else shards.split_of(key, self.val_fraction, self.test_fraction)
                )
                clips[split].append(wav)
        report_skipped(skipped, "unusable audio clips")
        if not any(clips.values()):
            raise ValueError(f"no usable audio in source {self.source!r} ({len(skipped)} skipped, e.g. {skipped[:3]})")
        if self.source == "files":  # before k-means and encoding
            shards.check_splits({k: len(v) for k, v in clips.items()}, "usable audio clips", fix)
        if not clips["train"]:
            raise ValueError(f"no usable audio in source {self.source!r} ({len(skipped)} skipped, e.g. {skipped[:3]})")
        train_seconds = sum(len(w) for w in clips["train"]) / codec.SAMPLE_RATE
        if self.codec_weights == "random" and train_seconds < codec.MIN_KMEANS_SECONDS:
            raise ValueError(
                f"the training split holds {train_seconds:.1f} s of usable audio, but the random codec's k-means needs at "
                f"least {codec.MIN_KMEANS_SECONDS:.1f} s: add audio or raise data.seconds, lower data.val_fraction / "
                "data.test_fraction, or use pretrained codec weights (data.codec_weights)"
            )
        if self.codec_weights == "random":
            model = codec.random_codec(
                np.concatenate(clips["train"])[: int(self.kmeans_seconds * codec.SAMPLE_RATE)],
                self.bandwidth,
                seed=self.codec_seed,
                backend=self.codec_backend,
            )
        else:
            model = codec.build(self.codec_weights, self.bandwidth, self.codec_backend)
        codec.check_initialised(model, self.bandwidth)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        seconds = {}
        for split, wavs in clips.items():
            codes = codec.encode(model, wavs, device, self.bandwidth) if wavs else []
            for c in codes:
                writer.add(split, np.append(codec.flatten(c), self.eos_id))
            seconds[split] = float(sum(c.shape[1] for c in codes) / codec.FRAME_RATE)
            if split == "train":
                codec.check_diversity(np.concatenate(codes, 1))
        model = model.cpu()
        codec.save(model, writer.tmp / "codec.pt")
        self._codec = model
        units = np.full(self.vocab_size, 1.0 / (codec.FRAME_RATE * self.n_q))
        units[self.eos_id] = 0.0
        meta = {
            "tokenizer": self.settings()["tokenizer"],
            "codec_checksum": codec.checksum(model),
            "unit_counts": seconds,
            "skipped": len(skipped),
            "eos_id": self.eos_id,
            "n_q": self.n_q,
            "frame_rate": codec.FRAME_RATE,
        }
        return meta, units

    @property
    def codec(self):
        if self._codec is None:
            path = self.shard_dir / "codec.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: these shards hold tokens only (as restored from a table's records, which "
                    "keep no codec), so they train and score but cannot be decoded to audio; decode on the machine "
                    "that prepared them, or prepare the shards anew under another data.cache_dir"
                )
            self._codec = codec.load(path, self.bandwidth, self.codec_backend)
        return self._codec

    def decode(self, ids) -> np.ndarray:
        """Token ids -> waveform (24 kHz); EOS and a trailing partial frame are dropped."""
        ids = np.asarray([int(i) for i in ids if int(i) != self.eos_id])
        return codec.decode(self.codec, codec.unflatten(ids, self.n_q))

    def to_wav(self, ids, path: str):
        from pathlib import Path

        import soundfile as sf

        out = Path(path)
        with atomic_path(out) as tmp:
            sf.write(str(tmp), self.decode(ids), codec.SAMPLE_RATE)
        return out
