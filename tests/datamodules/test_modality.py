"""Each DataModule declares its modality and its data contract; nothing else names a modality."""

import pytest

from datamodules import ProbeDataModule, TextDataModule, modalities
from datamodules.modality import DataContract


def test_every_shipped_modality_is_declared_by_its_datamodule():
    ms = modalities()
    assert set(ms) == {"text", "music", "acoustic", "mqar", "copy"}
    assert (ms["text"].metric, ms["music"].metric, ms["acoustic"].metric) == (
        "bits_per_byte",
        "bits_per_note",
        "bits_per_second",
    )
    assert ms["mqar"].probe and ms["copy"].metric == "acc"
    assert ProbeDataModule.modality_for({"task": "copy"}).name == "copy"


def test_the_contract_is_what_the_model_reads(bpe_text):
    c = bpe_text.contract()
    assert isinstance(c, DataContract) and c.unit == "byte" and not c.report_accuracy
    assert c.seq_len == bpe_text.seq_len and c.units_per_token.shape[0] == bpe_text.vocab_size
    probe = ProbeDataModule(task="copy", seq_len=40, copy_len=8, copy_gap=4).contract()
    assert probe.units_per_token is None and probe.report_accuracy


def test_a_datamodule_without_a_contract_is_refused_by_name(bpe_text):
    import lightning.pytorch as pl

    from lit_vattn.train.module import LanguageModel

    class Foreign(pl.LightningDataModule):
        pass

    lm = LanguageModel(vocab_size=64)
    lm.trainer = type("T", (), {"datamodule": Foreign()})()
    with pytest.raises(TypeError, match="Foreign declares no contract"):
        lm.setup("fit")


def test_run_names_come_from_the_declared_modality():
    from jsonargparse import Namespace

    from lit_vattn.train.cli import default_run_name

    data = Namespace(class_path="datamodules.ProbeDataModule", init_args=Namespace(task="copy"))
    assert default_run_name(data, None) == "copy-vanilla"
    text = Namespace(class_path="datamodules.TextDataModule", init_args=Namespace())
    assert default_run_name(text, None) == "text-vanilla"
    assert TextDataModule.MODALITY.name == "text"
