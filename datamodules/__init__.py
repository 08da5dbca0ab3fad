"""DataModules for the three token streams, on one shared token-shard machinery, and the
in-context probes (generated, no shards)."""

from datamodules.acoustic import AcousticDataModule
from datamodules.base import TokenDataModule
from datamodules.music import MusicDataModule
from datamodules.probes import ProbeDataModule
from datamodules.text import TextDataModule

__all__ = ["AcousticDataModule", "MusicDataModule", "ProbeDataModule", "TextDataModule", "TokenDataModule"]
