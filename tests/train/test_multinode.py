"""Two "nodes" with real TCP between them: two network namespaces joined by a veth pair, one
``torchrun`` per namespace, rendezvous across the link. A node dies mid-run; both restart with
``--ckpt_path last`` and each rank continues its own data stream exactly."""

import json
import os
import subprocess
import sys
import time
import uuid

import helpers
import pytest
import torch
from helpers import CPU, QUIET, TEXT

pytestmark = pytest.mark.slow

ADDR = ("10.231.7.1", "10.231.7.2")  # a private /24 used by nothing else on a CI runner
B = 4  # windows per batch per rank (helpers.TINY)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """(netns name, veth name) per node; skipped with the reason where namespaces are not allowed."""
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"lv{tag}{n}", f"lv{tag}v{n}") for n in range(2)]
    try:
        for ns, _ in hosts:
            sh("ip", "netns", "add", ns)
    except (OSError, subprocess.CalledProcessError) as e:
        for ns, _ in hosts:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        reason = getattr(e, "stderr", None) or e
        pytest.skip(f"network namespaces are not permitted here (needs root and iproute2): {reason}")
    try:
        (a_ns, a_if), (b_ns, b_if) = hosts
        sh("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
        for (ns, iface), addr in zip(hosts, ADDR):
            sh("ip", "link", "set", iface, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", iface)
            sh("ip", "-n", ns, "link", "set", iface, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns, _ in hosts:
            kill_host(ns)
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def kill_host(ns: str) -> None:
    """What a node failure does: every process of that host dies at once (torchrun's workers run in
    process groups of their own (setsid), so killing torchrun's group would leave them running)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass


def start(hosts, cwd, port: int, *args: str) -> list[subprocess.Popen]:
    procs = []
    for node, (ns, iface) in enumerate(hosts):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": iface}
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        cmd += ["--node_rank", str(node), "--nproc_per_node", "1", "--master_addr", ADDR[0]]
        cmd += ["--master_port", str(port), "-m", "lit_vattn", *args]
        log = open(cwd / f"node{node}-{port}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def step_of(ckpt) -> int:
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def test_a_node_dies_mid_run_and_both_resume_the_same_streams(two_hosts, tmp_path, bpe_text):
    args = ["fit", "--config", TEXT, "--config", CPU, *helpers.TINY, *QUIET, "--trainer.num_nodes", "2"]
    args += ["--trainer.devices", "1", "--trainer.strategy", "ddp", "--trainer.limit_val_batches", "0"]
    args += ["--checkpoint.every_n_train_steps", "2", "--trainer.callbacks+=lit_vattn.train.callbacks.BatchIndexLogger"]
    ckpt = tmp_path / "runs/text-vanilla/checkpoints/last.ckpt"

    first = start(two_hosts, tmp_path, 29711, *args, "--trainer.max_steps", "100000")
    deadline = time.time() + 240
    while step_of(ckpt) < 4:
        assert time.time() < deadline and all(p.poll() is None for p in first), (
            tmp_path / "node0-29711.log"
        ).read_text()[-4000:]
        time.sleep(0.5)
    kill_host(two_hosts[1][0])  # node 1 fails
    try:
        first[0].wait(timeout=120)  # node 0 notices its peer is gone and fails
    except subprocess.TimeoutExpired:
        kill_host(two_hosts[0][0])  # as a scheduler ends a job that lost a node
    for p in first:
        p.wait(timeout=30)
    assert first[1].returncode != 0
    k = step_of(ckpt)
    assert k >= 4

    again = start(two_hosts, tmp_path, 29712, *args, "--trainer.max_steps", str(k + 3), "--ckpt_path", "last")
    for node, p in enumerate(again):
        assert p.wait(timeout=300) == 0, (tmp_path / f"node{node}-29712.log").read_text()[-4000:]
    assert step_of(ckpt) == k + 3
    run = tmp_path / "runs/text-vanilla"
    for rank in range(2):  # rank r of 2 takes windows r, r + 2, ...: continued from window k * B of its own
        seen = json.loads((run / f"batch_indices_rank{rank}.json").read_text())
        assert seen == [2 * j + rank for j in range(k * B, (k + 3) * B)]
