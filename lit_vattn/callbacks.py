"""Callbacks the CLI always adds."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


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
