"""The logger presets (configs/logger/): a short fit writes what each logger's own reader reads, and
the run summary that tables read is written beside it, whichever logger is chosen."""

import json

import pytest
from helpers import CPU, QUIET, ROOT, TEXT, TINY

from lit_vattn.experiments.records import read_summary

pytestmark = pytest.mark.slow


def fit_and_test(tmp_path, preset: str, *extra: str) -> None:
    from lit_vattn.train.cli import cli_main

    base = ["--config", TEXT, "--config", CPU, "--config", str(ROOT / f"configs/logger/{preset}.yaml"), *TINY, *QUIET]
    base += ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]
    cli_main(["fit", *base, "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1"])
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    cli_main(["test", *base, "--trainer.limit_test_batches", "2", "--ckpt_path", str(ckpt)])


def summary_of(tmp_path) -> dict:
    """The run's summary.json, in its own directory <save_dir>/<run name> whatever the logger: the
    training stats and the test score."""
    (found,) = list((tmp_path / "runs").rglob("summary.json"))
    assert found.parent == tmp_path / "runs/text-vanilla"
    summary = read_summary(found.parent)
    assert summary["stats"]["global_step"] == 4 and summary["test"]["nll"] > 0
    return summary


def test_tensorboard_writes_events_a_tensorboard_reader_parses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit_and_test(tmp_path, "tensorboard", "--trainer.logger.init_args.name", "text-vanilla")
    run = tmp_path / "runs/text-vanilla"
    events = EventAccumulator(str(run)).Reload()
    tags = events.Tags()["scalars"]
    assert "train/loss" in tags and "test/nll" in tags
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3]
    assert (run / "summary.json").is_file()  # the tables' source, in the same run directory
    summary_of(tmp_path)


def test_wandb_offline_writes_a_run_with_the_metrics(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        fit_and_test(tmp_path, "wandb")
    finally:
        wandb.finish()  # what the end of a `lit-vattn` process does (fit and test here share one run)
    (run,) = list((tmp_path / "runs/text-vanilla/wandb").glob("offline-run-*"))
    (record,) = list(run.glob("run-*.wandb"))  # what `wandb sync` uploads later
    history = wandb_history(record)
    assert [int(h["trainer/global_step"]) for h in history if "train/loss" in h] == [0, 1, 2, 3]
    (test,) = [h for h in history if "test/nll" in h]
    assert float(test["test/nll"]) == pytest.approx(summary_of(tmp_path)["test"]["nll"], rel=1e-6)


def wandb_history(path) -> list[dict]:
    """The history rows of an offline W&B run file. wandb >= 0.19 no longer ships a Python reader, so
    the file's framing (LevelDB's log format: 32 KiB blocks of crc32, length, type records after a
    7-byte header) is read here and each record parsed with wandb's own protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, block, pos, part, rows = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        part, pos = part + raw[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record.FromString(part)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            part = b""
    return rows


def test_mlflow_logs_to_a_local_store_that_mlflow_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the CLI opts in; restored afterwards
    fit_and_test(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(tmp_path / "runs/text-vanilla").as_uri())  # the run's own store
    (experiment,) = [e for e in client.search_experiments() if e.name == "lit-vattn"]
    runs = client.search_runs([experiment.experiment_id])
    metrics = {k for r in runs for k in r.data.metrics}
    assert {"train/loss", "test/nll"} <= metrics
    steps = [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss")]
    assert sorted(steps) == [0, 1, 2, 3]
    assert {r.info.run_name for r in runs} == {"text-vanilla"}
    summary_of(tmp_path)
