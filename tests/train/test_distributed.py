"""Many processes on the CPU (gloo): DDP through the real command, torchrun "nodes", resume, FSDP."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
from helpers import CPU, QUIET, ROOT, TEXT

pytestmark = pytest.mark.slow  # several processes each

TINY = ["--config", TEXT, "--config", CPU, *helpers.TINY, *QUIET, "--trainer.log_every_n_steps", "1"]
B = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lit_vattn(cwd, *args, launcher=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = (launcher or [sys.executable, "-m", "lit_vattn"]) + list(args)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-6000:]}"
    return p


def last_metric(run: Path, key: str) -> float:
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get(key)]
    return float(rows[-1][key])


def indices(run: Path, rank: int) -> list[int]:
    return json.loads((run / f"batch_indices_rank{rank}.json").read_text())


@pytest.fixture
def ddp_run(tmp_path, bpe_text):
    port = str(free_port())
    os.environ["MASTER_PORT"] = port
    lit_vattn(
        tmp_path,
        "fit",
        *TINY,
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "6",
        "--trainer.val_check_interval",
        "6",
        "--trainer.limit_val_batches",
        "1.0",
        "--trainer.callbacks+=lit_vattn.train.callbacks.BatchIndexLogger",
    )
    return tmp_path / "runs/text-vanilla"


def test_ddp_two_processes_disjoint_windows_and_exact_validation(ddp_run, tmp_path):
    run = ddp_run
    r0, r1 = indices(run, 0), indices(run, 1)
    assert len(r0) == len(r1) == 6 * B
    assert not set(r0) & set(r1)  # the two ranks saw disjoint training windows
    assert r0 == [2 * k for k in range(6 * B)] and r1 == [2 * k + 1 for k in range(6 * B)]
    ddp_nll = last_metric(run, "val/nll")
    ddp_bpb = last_metric(run, "val/bits_per_byte")
    # one process evaluates the same checkpoint on the same (whole) validation split
    ckpt = run / "checkpoints/last.ckpt"
    lit_vattn(tmp_path, "validate", *TINY, "--trainer.limit_val_batches", "1.0", "--ckpt_path", str(ckpt))
    single = tmp_path / "runs/text-vanilla"  # validate appends to the run's own metrics.csv
    assert last_metric(single, "val/nll") == pytest.approx(ddp_nll, rel=1e-5)
    assert last_metric(single, "val/bits_per_byte") == pytest.approx(ddp_bpb, rel=1e-5)


def test_ddp_resume_continues_each_ranks_stream(ddp_run, tmp_path):
    ckpt = ddp_run / "checkpoints/last.ckpt"
    os.environ["MASTER_PORT"] = str(free_port())
    lit_vattn(
        tmp_path,
        "fit",
        *TINY,
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "9",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.callbacks+=lit_vattn.train.callbacks.BatchIndexLogger",
        "--ckpt_path",
        str(ckpt),
    )
    resumed = tmp_path / "runs/text-vanilla"
    assert indices(resumed, 0) == [2 * k for k in range(6 * B, 9 * B)]
    assert indices(resumed, 1) == [2 * k + 1 for k in range(6 * B, 9 * B)]
    state = torch.load(resumed / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 9


def refused(p: subprocess.CompletedProcess) -> str:
    assert p.returncode != 0, p.stdout[-2000:]
    return p.stderr


def test_resume_on_fewer_processes_is_refused_naming_both(ddp_run, tmp_path):
    ckpt = ddp_run / "checkpoints/last.ckpt"
    args = [sys.executable, "-m", "lit_vattn", "fit", *TINY, "--trainer.max_steps", "9", "--ckpt_path", str(ckpt)]
    p = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "trained by 2 process(es) and this run has 1" in refused(p)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 6  # nothing trained


def test_resume_on_more_processes_is_refused_naming_both(tmp_path, bpe_text):
    lit_vattn(tmp_path, "fit", *TINY, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0")
    os.environ["MASTER_PORT"] = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    args = ["fit", *TINY, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4"]
    cmd = [sys.executable, "-m", "lit_vattn", *args, "--ckpt_path", "last"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "trained by 1 process(es) and this run has 2" in refused(p)


def test_torchrun_two_nodes_one_process_each(tmp_path, bpe_text):
    port = str(free_port())
    args = [
        "fit",
        *TINY,
        "--trainer.num_nodes",
        "2",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.val_check_interval",
        "3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in range(2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "-m",
            "lit_vattn",
            *args,
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    ckpts = list(tmp_path.glob("runs/**/*.ckpt"))
    assert [c.name for c in ckpts] == ["last.ckpt"]
    assert torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"] == 3


def val_nlls(run: Path) -> list[float]:
    return [float(r["val/nll"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/nll")]


# the methods that add parameters a wrapper must shard (mixing logits, cross-attention, streams); the
# plain model is their subset, and DDP runs it in every test above
@pytest.mark.parametrize("arch", ["va", "las", "hc"])
def test_fsdp2_trains_checkpoints_resumes_and_matches_ddp(tmp_path, bpe_text, arch):
    """The FSDP preset (FSDP2) on 2 gloo processes: 2 steps, a checkpoint, a resume to 4 steps; the
    validation NLL at steps 2 and 4 equals DDP's uninterrupted run, and the checkpoint is the
    ordinary file a one-process run writes."""
    method = ["--config", str(ROOT / f"configs/arch/{arch}.yaml")] if arch != "vanilla" else []
    two = ["--trainer.devices", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1.0"]
    os.environ["MASTER_PORT"] = str(free_port())
    lit_vattn(
        tmp_path,
        "fit",
        *TINY,
        *method,
        *two,
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "4",
        "--trainer.logger.init_args.name",
        "ddp",
    )
    fsdp = [
        "fit", *TINY, *method, "--config", str(ROOT / "configs/trainer/fsdp.yaml"), *two,
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--data.init_args.num_workers", "0",
        "--trainer.logger.init_args.name", "fsdp",
    ]  # fmt: skip
    os.environ["MASTER_PORT"] = str(free_port())
    lit_vattn(tmp_path, *fsdp, "--trainer.max_steps", "2")
    os.environ["MASTER_PORT"] = str(free_port())
    lit_vattn(tmp_path, *fsdp, "--trainer.max_steps", "4", "--ckpt_path", "last")
    ddp_nll, fsdp_nll = val_nlls(tmp_path / "runs/ddp"), val_nlls(tmp_path / "runs/fsdp")
    assert len(ddp_nll) == 2 and fsdp_nll == pytest.approx(ddp_nll, rel=2e-5)
    state = torch.load(tmp_path / "runs/fsdp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    ddp_state = torch.load(tmp_path / "runs/ddp/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["state_dict"].keys() == ddp_state["state_dict"].keys()
    assert all(type(t) is torch.Tensor for t in state["state_dict"].values())  # gathered, not DTensor shards
