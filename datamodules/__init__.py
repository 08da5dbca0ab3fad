"""DataModules for the three token streams, on one shared token-shard machinery, and the
in-context probes (generated, no shards)."""

from datamodules.acoustic import AcousticDataModule
from datamodules.base import StreamDataModule, TokenDataModule
from datamodules.modality import Modality
from datamodules.music import MusicDataModule
from datamodules.probes import ProbeDataModule
from datamodules.text import TextDataModule

__all__ = [
    "AcousticDataModule",
    "MusicDataModule",
    "ProbeDataModule",
    "TextDataModule",
    "TokenDataModule",
    "modalities",
]


def modalities() -> dict[str, Modality]:
    """Every modality the suite's DataModules produce (each class declares its own), by name."""
    out, todo = {}, [StreamDataModule]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        out.update({m.name: m for m in cls.modalities()})
    return dict(sorted(out.items()))
