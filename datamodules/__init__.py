"""DataModules for the three token streams, on one shared token-shard machinery."""

from datamodules.acoustic import AcousticDataModule
from datamodules.base import TokenDataModule
from datamodules.music import MusicDataModule
from datamodules.text import TextDataModule

__all__ = ["AcousticDataModule", "MusicDataModule", "TextDataModule", "TokenDataModule"]
