"""Preparation speed of the embedded defaults: text, music (pieces/s) and acoustic (audio seconds/s).

Each stage prepares shards from scratch in a fresh cache directory and times the stages inside:

    python benchmarks/prepare_speed.py --audio-seconds 600 --out results/prepare-speed-cpu.md
    python benchmarks/prepare_speed.py --stages audio --audio-seconds 1800 --encode-batch-seconds 120,600 \
        --out results/prepare-speed-h100.md        # on a GPU: EnCodec encoding there

EnCodec runs in float32 (TF32 matmuls off) on either device, so GPU codes are the CPU's up to
floating-point summation order.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from throughput import hardware, sync

from datamodules import MusicDataModule, TextDataModule, codec
from datamodules.audio_sources import rendered_music_clips, speech_clips
from datamodules.music_sources import score_files, score_pieces
from lit_vattn.io import write_text
from lit_vattn.provenance import git_commit


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio-seconds", type=float, default=600)
    p.add_argument("--kmeans-seconds", type=float, default=300)
    p.add_argument(
        "--scores",
        type=int,
        default=200,
        help="kern/MusicXML scores (evenly spaced over music21's corpus) to convert for source='full'",
    )
    p.add_argument(
        "--stages",
        default="text,music,audio",
        help="comma-separated subset of text, music (with --scores), audio (synthesis, k-means, encoding)",
    )
    p.add_argument(
        "--encode-batch-seconds",
        default="120",
        help="comma-separated audio seconds per EnCodec batch; one encoding row each",
    )
    p.add_argument(
        "--codec-backends",
        default="transformers",
        help="comma-separated EnCodec implementations to time (transformers, encodec); same codes in each",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    stages = set(args.stages.split(","))
    if stages - {"text", "music", "audio"}:
        raise SystemExit(
            f"--stages: unknown {sorted(stages - {'text', 'music', 'audio'})}; choose from text, music, audio"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tok in ("gpt2", "bpe") if "text" in stages else ():
            dm = TextDataModule(tokenizer=tok, cache_dir=f"{tmp}/t-{tok}")
            _, dt = timed(dm.prepare_data)
            dm.setup()
            mb = sum(dm.meta["unit_counts"].values()) / 1e6
            n = sum(s["tokens"] for s in dm.meta["splits"].values())
            rows.append((f"text, embedded, {tok}", f"{mb:.1f} MB -> {n / 1e6:.2f} M tokens", dt, f"{mb / dt:.2f} MB/s"))
        if "music" in stages:
            rows += music_rows(tmp, args)
        if "audio" in stages:
            rows += audio_rows(args, device)
    write_table(rows, args)


def music_rows(tmp: str, args) -> list:
    rows = []
    dm = MusicDataModule(cache_dir=f"{tmp}/m")
    _, dt = timed(dm.prepare_data)
    dm.setup()
    pieces = sum(s["documents"] for s in dm.meta["splits"].values())
    notes = sum(dm.meta["unit_counts"].values())
    n = sum(s["tokens"] for s in dm.meta["splits"].values())
    rows.append(
        (
            "music, embedded ABC, REMI",
            f"{pieces:,} pieces, {notes / 1e6:.2f} M notes, {n / 1e6:.2f} M tokens",
            dt,
            f"{pieces / dt:.0f} pieces/s",
        )
    )
    if args.scores:
        failed: list = []
        scores, dt = timed(lambda: list(score_pieces(Path(tmp) / "scores", skipped=failed, max_files=args.scores)))
        notes = sum(s.note_num() for _, _, s in scores)
        rows.append(
            (
                "music, kern/MusicXML via music21 (source='full' part; 2 workers, 120 s timeout)",
                f"{len(scores) + len(failed)} of {len(score_files())} scores: {len(scores)} converted "
                f"({notes / 1e3:.0f} k notes), {len(failed)} failed or timed out",
                dt,
                f"{(len(scores) + len(failed)) / dt:.2f} scores/s",
            )
        )
    return rows


def audio_rows(args, device) -> list:
    rows = []
    clips, dt = timed(lambda: [c[2] for c in speech_clips(args.audio_seconds)])
    secs = sum(len(c) for c in clips) / codec.SAMPLE_RATE
    rows.append(
        (
            "speech synthesis (espeak-ng, 1 core)",
            f"{secs:.0f} s of audio, {len(clips)} utterances",
            dt,
            f"{secs / dt:.0f} audio s/s",
        )
    )
    audio = np.concatenate(clips)[: int(args.kmeans_seconds * codec.SAMPLE_RATE)]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for backend in args.codec_backends.split(","):
        model, dt = timed(lambda: codec.random_codec(audio, 6.0, backend=backend))
        rows.append(
            (
                f"EnCodec k-means init ({backend}; 8 levels, {args.kmeans_seconds:.0f} s)",
                "random weights, 10 iterations",
                dt,
                "-",
            )
        )
        for bs in (float(x) for x in args.encode_batch_seconds.split(",")):
            codec.encode(model, clips[:8], device, 6.0, batch_seconds=bs)  # warm-up: kernels, cuDNN plans
            sync(device)
            _, dt = timed(lambda: (codec.encode(model, clips, device, 6.0, batch_seconds=bs), sync(device)))
            rows.append(
                (
                    f"EnCodec 6 kbps encode ({backend}, {device.type}, {bs:.0f} s of audio per batch)",
                    f"{secs:.0f} s of audio",
                    dt,
                    f"{secs / dt:.1f} audio s/s ({secs / dt:.0f}x real time)",
                )
            )
    rendered, dt = timed(lambda: [c[2] for c in rendered_music_clips(args.audio_seconds)])
    secs = sum(len(c) for c in rendered) / codec.SAMPLE_RATE
    rows.append(
        (
            "music: ABC -> MIDI (abc2midi) -> audio (symusic synthesizer), 1 core",
            f"{secs:.0f} s of audio, {len(rendered)} pieces",
            dt,
            f"{secs / dt:.0f} audio s/s",
        )
    )
    return rows


def write_table(rows: list, args) -> None:
    lines = [
        "# Preparation speed of the embedded defaults",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- commit: {git_commit()}, date: {datetime.date.today().isoformat()}",
        f"- hardware: {hardware()}",
        "",
        "| stage | amount | seconds | rate |",
        "|---|---|---|---|",
    ] + [f"| {a} | {b} | {c:.1f} | {d} |" for a, b, c, d in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_text(args.out, table)


if __name__ == "__main__":
    main()
