"""Peak memory of preparing a large local text corpus: is tokenization bounded in memory?

Writes corpora of ``--mb`` megabytes of real text (the embedded GCIDE + KJV documents, repeated with a
copy number in front of each so no two documents are equal) as local datasets in the hub's parquet
layout (``--layouts``: file and row-group sizes), then prepares their shards in a fresh process per
setting, which reports its own peak resident memory (``VmHWM``; a child's ``ru_maxrss`` would include
the parent's at the fork). A 1 MB corpus in the same process shape gives
the fixed cost (Python, torch, datasets, the tokenizer), so the difference is what the corpus adds.

    python benchmarks/prepare_memory.py --out results/prepare-memory-cpu.md
    python benchmarks/prepare_memory.py --mb 200 --layouts 200:16 --tokenizers gpt2 --code /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREPARE = """
import json, sys
from datamodules import TextDataModule, shards
dm = TextDataModule(source=sys.argv[1], tokenizer=sys.argv[2], streaming=True, cache_dir=sys.argv[3])
dm.prepare_data()
meta = shards.load_meta(dm.shard_dir)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"tokens": sum(s["tokens"] for s in meta["splits"].values()),
                  "bytes": sum(meta["unit_counts"].values()), "peak_kb": peak}))
"""


def write_corpus(folder: Path, mb: float, file_mb: float, group_mb: float) -> int:
    """Real text up to ``mb`` MB in parquet files of ~``file_mb`` MB made of row groups of ~``group_mb``
    MB (the unit ``datasets`` reads at once); returns the bytes written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamodules.text_sources import embedded_documents

    folder.mkdir(parents=True)
    target, per_file, per_group = int(mb * 1e6), int(file_mb * 1e6), int(group_mb * 1e6)
    total, n_files, copy, group, size, writer, in_file = 0, 0, 0, [], 0, None, 0
    while total < target:
        for _, text in embedded_documents():
            row = f"({copy}) {text}"
            group.append(row)
            size += len(row.encode())
            if size >= per_group or total + size >= target:
                if writer is None:
                    writer = pq.ParquetWriter(
                        folder / f"train-{n_files:05d}.parquet", pa.schema([("text", pa.string())])
                    )
                writer.write_table(pa.table({"text": group}), row_group_size=len(group))
                total, in_file, group, size = total + size, in_file + size, [], 0
                if in_file >= per_file or total >= target:
                    writer.close()
                    writer, in_file, n_files = None, 0, n_files + 1
                if total >= target:
                    return total
        copy += 1
    return total


def measure(source: Path, tokenizer: str, code: Path) -> dict:
    """Prepare ``source`` in a fresh process; its peak RSS (MB), wall time and token count."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", PREPARE, str(source), tokenizer, cache],
            env=env,
            cwd=code,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out = proc.communicate()[0].decode()
        seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"preparing {source} with {tokenizer} failed (exit {proc.returncode})")
    r = json.loads(out.strip().splitlines()[-1])
    r["peak_mb"] = r.pop("peak_kb") / 1024
    return {**r, "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", default="50,200", help="corpus sizes in MB, comma-separated")
    p.add_argument(
        "--layouts",
        default="16:16,200:16,200:200",
        help="parquet layouts, comma-separated FILE_MB:ROW_GROUP_MB (hub datasets: files of a few hundred MB)",
    )
    p.add_argument("--tokenizers", default="gpt2,bpe", help="tokenizers to measure, comma-separated")
    p.add_argument("--code", default=str(ROOT), help="checkout whose datamodules are measured")
    p.add_argument("--out", default=None, help="markdown file for the table")
    args = p.parse_args()
    code = Path(args.code).resolve()
    from throughput import hardware

    from lit_vattn.provenance import git_commit

    commit = (
        git_commit()
        if code == ROOT
        else subprocess.run(
            ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        write_corpus(base, 1, 1, 1)
        for tok in args.tokenizers.split(","):
            fixed = measure(base, tok, code)
            rows.append(("1", "1", "1", tok, fixed))
            for mb in [float(x) for x in args.mb.split(",")]:
                for layout in args.layouts.split(","):
                    file_mb, group_mb = (float(x) for x in layout.split(":"))
                    if file_mb > mb:
                        continue
                    folder = Path(tmp) / f"corpus-{mb:g}-{file_mb:g}-{group_mb:g}"
                    if not folder.exists():
                        write_corpus(folder, mb, file_mb, group_mb)
                    r = measure(folder, tok, code)
                    r["added_mb"] = r["peak_mb"] - fixed["peak_mb"]
                    rows.append((f"{r['bytes'] / 1e6:.0f}", f"{file_mb:g}", f"{group_mb:g}", tok, r))
                    print(rows[-1], flush=True)
    lines = [
        "# Peak memory of preparing a local text corpus (streamed, tokenized straight into shards)",
        "",
        f"Command: `python benchmarks/prepare_memory.py {' '.join(sys.argv[1:])}`  ",
        f"Code measured: {commit or code}; date {datetime.date.today()}; hardware: {hardware()}.",
        "",
        "Each row is one fresh process preparing the shards (its peak resident memory, `VmHWM`); the 1 MB",
        "rows are the fixed cost of the process (Python, torch, datasets, the tokenizer).",
        "",
        "| corpus MB | parquet file MB | row group MB | tokenizer | tokens | seconds | peak RSS MB | added by the corpus MB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for mb, file_mb, group_mb, tok, r in rows:
        added = f"{r['added_mb']:.0f}" if "added_mb" in r else "(fixed cost)"
        lines.append(
            f"| {mb} | {file_mb} | {group_mb} | {tok} | {r['tokens']:,} | {r['seconds']:.0f} | {r['peak_mb']:.0f} | {added} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from lit_vattn.io import write_text

        write_text(Path(args.out), text)


if __name__ == "__main__":
    main()
