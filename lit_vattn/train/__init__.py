"""Training: the LightningModule, its metrics and callbacks, run directories and checkpoints, and the
``lit-vattn`` command line."""
