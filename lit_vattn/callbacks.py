"""Callbacks the CLI always adds."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ThroughputMonitor


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor counting tokens: logs train/items_per_sec (tokens/s, all
    devices), train/device/mfu (FLOPs from ``LanguageModel.flops_per_batch`` over the GPU's peak,
    CUDA only) and shows tokens/s in the progress bar."""

    def __init__(self, window_size: int = 20):
        """
        Args:
            window_size: Batches in the sliding window that tokens/s and MFU are averaged over.
        """
        super().__init__(
            batch_size_fn=lambda b: b["input"].shape[0],
            length_fn=lambda b: b["input"].numel(),
            window_size=window_size,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        if trainer.global_rank == 0:
            m = self._throughputs[trainer.state.stage].compute()
            tps = m.get("items_per_sec", m.get(f"device{self.kwargs.get('separator', '/')}items_per_sec"))
            if tps is not None:  # present once the window is full
                pl_module.log("tok/s", float(tps), prog_bar=True, logger=False, on_step=True)


class BatchIndexLogger(Callback):
    """Writes the training sample numbers each rank consumed to
    ``<log_dir>/batch_indices_rank<r>.json``: to check that ranks draw disjoint windows and that a
    resumed run continues the same stream (``--trainer.callbacks+=lit_vattn.callbacks.BatchIndexLogger``)."""

    def __init__(self):
        self.indices: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.indices.extend(int(i) for i in batch["index"])

    def on_train_end(self, trainer, pl_module) -> None:
        out = Path(trainer.log_dir or ".") / f"batch_indices_rank{trainer.global_rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.indices))
        os.replace(tmp, out)
