"""``scripts/slurm_table.sh`` under a stand-in ``sbatch`` that runs each job at once on this machine
(as submitit's local executor does): one array task per method, then the table job, which only runs
once every task succeeded."""

import csv
import json
import os
import stat
import subprocess
import sys

import pytest
from helpers import ROOT
from test_reproduce import SHORT

pytestmark = pytest.mark.slow  # tiny runs in subprocesses

SBATCH = r"""#!{python}
import json, os, subprocess, sys
from pathlib import Path
state_file, args, opts, i = Path("{state}"), sys.argv[1:], {{}}, 0
while args[i].startswith("--"):
    if args[i] == "--parsable":
        i += 1
        continue
    opts[args[i]], i = args[i + 1], i + 2
script, rest = args[i], args[i + 1:]
state = json.loads(state_file.read_text()) if state_file.exists() else {{"next": 100, "failed": [], "jobs": []}}
job = state["next"]
state["next"] += 1
state["jobs"].append({{"job": job, "step": os.environ.get("LIT_VATTN_TABLE_STEP"), **opts}})
dep = opts.get("--dependency", "")
if not (dep.startswith("afterok:") and int(dep[8:]) in state["failed"]):
    lo, hi = map(int, opts["--array"].split("-")) if "--array" in opts else (None, None)
    for task in [None] if lo is None else range(lo, hi + 1):
        env = dict(os.environ, SLURM_JOB_ID=str(job), **({{}} if task is None else {{"SLURM_ARRAY_TASK_ID": str(task)}}))
        with open(state_file.parent / f"job{{job}}-{{task}}.out", "w") as out:
            if subprocess.call(["bash", script, *rest], env=env, stdout=out, stderr=subprocess.STDOUT):
                state["failed"].append(job)
state_file.write_text(json.dumps(state))
print(job)
"""


def submit(tmp_path, archs: str, *args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(SBATCH.format(python=sys.executable, state=tmp_path / "sbatch.json"))
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "ARCHS": archs,
        "RUNS": str(tmp_path / "runs"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = ["bash", str(ROOT / "scripts/slurm_table.sh"), "--modality", "text", "--preset", "tiny", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def test_one_array_task_per_method_then_the_table_of_them_all(tmp_path, bpe_text):
    p = submit(tmp_path, "vanilla,va", "--seeds", "0", "--out", str(tmp_path / "results"), *SHORT)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 run tasks (job 100), then the table (job 101)" in p.stdout
    jobs = json.loads((tmp_path / "sbatch.json").read_text())
    assert [(j["step"], j.get("--array"), j.get("--dependency")) for j in jobs["jobs"]] == [
        ("run", "0-1", None),
        ("table", None, "afterok:100"),
    ]
    assert not jobs["failed"], [f.read_text()[-2000:] for f in tmp_path.glob("job*.out")]
    # each task trained its own method's seeds; the table job tabled every run, as the runs recorded them
    done = {
        (arch, seed): json.loads((tmp_path / f"runs/text-tiny/{arch}/seed{seed}/done.json").read_text())
        for arch in ("vanilla", "va")
        for seed in (0,)
    }
    table = tmp_path / "results/text-tiny-vanilla-va-seeds0.csv"  # a table of fewer methods names them
    rows = {(r["arch"], int(r["seed"])): r for r in csv.DictReader(open(table))}
    assert rows.keys() == done.keys()
    assert all(float(rows[k]["test_nll"]) == pytest.approx(done[k]["test_nll"], rel=1e-6) for k in done)


def test_the_table_job_does_not_run_when_a_task_failed(tmp_path, bpe_text):
    p = submit(tmp_path, "vanilla", "--seeds", "0", "--out", str(tmp_path / "results"), "--override", "--bogus", "1")
    assert p.returncode == 0, p.stderr[-3000:]  # submitting worked; the task itself fails
    jobs = json.loads((tmp_path / "sbatch.json").read_text())
    assert jobs["failed"] == [100]
    assert not list((tmp_path / "results").glob("*.md"))  # no table from a failed sweep
