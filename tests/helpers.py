"""What many test files share: the repository's paths, the tiny shapes models and CLI runs use, the
causality check, and the switch settings the method test files declare."""

import importlib.util
import os
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lit_vattn import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
CPU = str(ROOT / "configs/trainer/cpu.yaml")
TEXT = str(ROOT / "configs/data/text.yaml")
# 2 layers x 64 wide, 32-token windows of 4: a CLI run that trains a step in well under a second
TINY = (
    "--model.init_args.config.n_layer 2 --model.init_args.config.n_head 2 --model.init_args.config.d_model 64 "
    "--data.init_args.seq_len 32 --data.init_args.batch_size 4"
).split()
QUIET = ["--trainer.enable_progress_bar", "false"]

# The shipped YAMLs prepare the whole embedded corpus of their modality; CI shrinks the music and
# audio data (same settings as the DataModule tests, so the shards are built once per test run).
SMALL_DATA = {
    "music": [
        "--data.init_args.max_pieces",
        "1000",
        "--data.init_args.val_fraction",
        "0.1",
        "--data.init_args.test_fraction",
        "0.1",
    ],
    "acoustic": [
        "--data.init_args.seconds",
        "150",
        "--data.init_args.kmeans_seconds",
        "60",
        "--data.init_args.bandwidth",
        "3.0",
        "--data.init_args.codec_weights",
        "random",
        "--data.init_args.val_fraction",
        "0.15",
        "--data.init_args.test_fraction",
        "0.15",
    ],
}

# the shape the method tests build: 4 layers of 4 heads, 64 wide; a vocabulary of 61
CFG = dict(n_layer=4, n_head=4, d_model=64, max_seq_len=32)
L, H, D = CFG["n_layer"], CFG["n_head"], CFG["d_model"]
V = 61


def tiny_gpt(make, seed: int = 0, **cfg) -> GPT:
    """The method test shape with the reader(s) ``make()`` returns, initialised from ``seed``."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **cfg}), V, make())


def assert_causal(net: GPT, V: int, T: int = 24, seed: int = 0):
    """Changing token t+1 leaves the logits at positions <= t unchanged, for every t."""
    torch.manual_seed(seed)
    net.eval()
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        ref = net(x)
        for t in range(T - 1):
            x2 = x.clone()
            x2[:, t + 1] = (x2[:, t + 1] + 1 + torch.randint(0, V - 1, (1,))) % V
            out = net(x2)
            torch.testing.assert_close(out[:, : t + 1], ref[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(out[:, t + 1 :], ref[:, t + 1 :])


def declared_settings() -> dict:
    """name -> reader factory: the module-level ``SETTINGS`` of every test file that declares them
    (a method's own test file names the switch settings the shared contract checks too)."""
    out = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if "\nSETTINGS = " not in path.read_text():
            continue
        module = sys.modules.get(path.stem)
        if module is None or Path(module.__file__).resolve() != path.resolve():
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module  # pytest finds it there when it collects the file itself
            spec.loader.exec_module(module)
        out.update(module.SETTINGS)
    return out


def tiny_run(modality: str, tmp_path, monkeypatch) -> Path:
    """Two training steps of a tiny vanilla model on the modality's embedded data (context 64),
    run in ``tmp_path``; returns its last checkpoint."""
    from lit_vattn.train.cli import cli_main

    monkeypatch.chdir(tmp_path)
    cli_main(
        ["fit", "--config", str(ROOT / f"configs/data/{modality}.yaml"), "--config", CPU, *TINY]
        + [*SMALL_DATA.get(modality, []), "--model.init_args.config.max_seq_len", "64", "--trainer.max_steps", "2"]
        + ["--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "2"]
    )
    return tmp_path / f"runs/{modality}-vanilla/checkpoints/last.ckpt"


def text_folder(d: Path, n: int) -> None:
    """``n`` small plain-text documents in folder ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"doc{i:02d}.txt").write_text(f"Document {i} tells the story of town {i} and its river. " * 20)


class SignalAtStep(Callback):
    """Sends this process ``signal`` (a name, e.g. ``SIGUSR1``) once the optimiser step ``step`` is
    done, as a scheduler does before preempting a job."""

    def __init__(self, step: int = 3, signal: str = "SIGUSR1"):
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


def wikitext_folder(d: Path, articles: dict[str, int], paragraphs: int = 3) -> Path:
    """A local dataset folder in the layout of the hub's ``Salesforce/wikitext`` (config
    ``wikitext-103-raw-v1``: one parquet file per split, a ``text`` column whose rows are the lines of
    the articles, blank ones included, declared by the README's ``configs``), with ``articles[split]``
    articles of KJV text, so that the WikiText preset runs offline. Returns ``d``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datamodules.text_sources import kjv_documents

    chapters = kjv_documents()
    files = d / "wikitext-103-raw-v1"
    files.mkdir(parents=True, exist_ok=True)
    config = ["---", "configs:", "- config_name: wikitext-103-raw-v1", "  data_files:"]
    for split, n in articles.items():
        rows = [""]
        for _ in range(n):
            title, text = next(chapters)
            words = text.split()
            rows += [f" = {title[4:]} = \n", ""]
            for p in range(paragraphs):
                if p:
                    rows += [f" = = Part {p} = = \n", ""]
                rows += [" " + " ".join(words[p::paragraphs]) + " \n", ""]
        pq.write_table(pa.table({"text": rows}), files / f"{split}-00000-of-00001.parquet")
        config += [f"  - split: {split}", f"    path: wikitext-103-raw-v1/{split}-*"]
    (d / "README.md").write_text("\n".join([*config, "---", ""]))
    return d
