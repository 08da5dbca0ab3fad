"""A SLURM job that is preempted (SIGUSR1 -> requeue checkpoint -> ``scontrol requeue``) or whose node
fails continues its own run when SLURM starts it again, exactly where it stopped."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch
import yaml
from helpers import CPU, QUIET, ROOT, TEXT

from lit_vattn.train.runs import newest_checkpoint

ARGS = [
    "fit",
    "--config",
    TEXT,
    "--config",
    CPU,
    *helpers.TINY,
    *QUIET,
    "--trainer.max_steps",
    "6",
    "--trainer.limit_val_batches",
    "0",
]
# what srun sets for one task of job 4242 (Lightning's SLURMEnvironment reads these)
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "text-vanilla",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def fit(cwd, name, env=None, extra=()):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "lit_vattn", *ARGS, "--trainer.logger.init_args.name", name, *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_preempted_job_requeues_into_its_run_and_finishes_bit_identical(tmp_path, bpe_text):
    plain = fit(tmp_path, "plain")
    assert plain.returncode == 0, plain.stderr[-4000:]

    # a fake scontrol: records the requeue, then ends the job the way SLURM does (SIGKILL after the signal)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\nkill -9 $PPID\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {**SLURM, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "job"  # the job's working directory is not the run's parent
    work.mkdir()
    run_root = ["--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    first = fit(work, "slurm", env, [*run_root, "--trainer.callbacks+=helpers.SignalAtStep"])
    assert first.returncode == -9, first.stderr[-4000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    run = tmp_path / "runs/slurm"
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and not list(work.rglob("*.ckpt"))  # the requeue checkpoint is in the run directory
    assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == 3

    # SLURM starts the same command again, with SLURM_RESTART_COUNT set: no --ckpt_path needed
    again = fit(
        work,
        "slurm",
        {**env, "SLURM_RESTART_COUNT": "1"},
        [
            *run_root,
            "--trainer.callbacks+=helpers.SignalAtStep",
            "--trainer.callbacks+=lit_vattn.train.callbacks.BatchIndexLogger",
        ],
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"] == str(hpc)
    B = 4  # it continued the data stream at step 3: windows 3B .. 6B - 1, each once
    assert json.loads((run / "batch_indices_rank0.json").read_text()) == list(range(3 * B, 6 * B))
    final = weights(run / "checkpoints/last.ckpt")
    reference = weights(tmp_path / "runs/plain/checkpoints/last.ckpt")
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


def test_requeue_continues_from_the_newest_checkpoint_whoever_wrote_it(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert newest_checkpoint(tmp_path) is None
    torch.save({"global_step": 300}, tmp_path / "hpc_ckpt_1.ckpt")  # preempted at step 300 ...
    torch.save({"global_step": 500}, tmp_path / "checkpoints/last.ckpt")  # ... ran on to 500, then its node failed
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoints/last.ckpt"
    torch.save({"global_step": 700}, tmp_path / "hpc_ckpt_2.ckpt")  # preempted again at 700
    assert newest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"


@pytest.mark.slow
def test_a_requeued_fit_is_not_refused_for_its_existing_run(tmp_path, bpe_text, monkeypatch):
    """Without SLURM a fresh fit into a trained run is refused; a requeued job resumes it instead."""
    monkeypatch.chdir(tmp_path)
    from lit_vattn.train.cli import cli_main

    base = ["fit", "--config", TEXT, "--config", CPU, *helpers.TINY, *QUIET, "--trainer.limit_val_batches", "0"]
    cli_main([*base, "--trainer.max_steps", "2"])
    with pytest.raises(FileExistsError, match="--ckpt_path last"):
        cli_main([*base, "--trainer.max_steps", "3"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    cli_main([*base, "--trainer.max_steps", "3"])
    run = tmp_path / "runs/text-vanilla"
    resumed_from = Path(yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"]).resolve()
    assert resumed_from == run / "checkpoints/last.ckpt"
    state = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
