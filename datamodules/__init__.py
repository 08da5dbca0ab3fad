"""DataModules for the three token streams, on one shared token-shard machinery."""

from datamodules.base import TokenDataModule
from datamodules.text import TextDataModule

__all__ = ["TextDataModule", "TokenDataModule"]
