"""FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's ``ModelParallelStrategy``.

FSDP2 rather than Lightning's ``FSDPStrategy`` (FSDP1): ``FSDPStrategy`` refuses ``accelerator="cpu"``,
so a preset built on it can only ever be tried on GPUs; FSDP2 shards each parameter as a DTensor,
runs on gloo between CPU processes (so CI trains, checkpoints and resumes it), keeps the module's
own parameter names (a checkpoint is the same file a one-process run writes), and is the FSDP that
PyTorch develops further (torchtitan's).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Optional

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn


class FSDP2Strategy(ModelParallelStrategy):
    """Every process holds one shard of every Block (data parallelism over all processes of all
    nodes, no tensor parallelism); the module shards itself in ``configure_model`` (``shard``)."""

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        process_group_backend: Optional[str] = None,
        timeout: Optional[timedelta] = timedelta(minutes=30),
    ):
        """
        Args:
            save_distributed_checkpoint: False (default): a checkpoint is one ordinary file, gathered
                on rank 0, that any number of processes (or ``lit-vattn test`` on one) can load.
                True: a directory of shards per checkpoint, written by every rank in parallel
                (faster and lighter for large models); resume it with the same number of processes.
            process_group_backend: nccl on GPUs, gloo on the CPU, by default.
            timeout: How long a collective may wait before the run fails.
        """
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        # Lightning's "auto" mesh is nodes x processes-per-node, data x tensor parallel; FSDP wants
        # one data-parallel dimension over every process
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard(net: nn.Module, mesh) -> None:
    """Shard each decoder Block on its own (so one Block's parameters are gathered at a time), then
    the root: embeddings, head, final norm and the reader's own parameters, gathered for the whole
    forward since the reader uses them between the Blocks."""
    from torch.distributed.fsdp import fully_shard

    dp = mesh["data_parallel"]
    for block in net.blocks:
        fully_shard(block, mesh=dp)
    fully_shard(net, mesh=dp)
