import os

import pytest

# Offline and fast: a hub id must fail at once instead of retrying for ~23 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def shard_cache(tmp_path_factory):
    """One shard cache for the whole session, so the embedded corpus is tokenized once per tokenizer."""
    path = os.environ.get("LIT_VATTN_TEST_CACHE") or str(tmp_path_factory.mktemp("shards"))
    os.environ["LIT_VATTN_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def bpe_text(shard_cache):
    """The embedded corpus with the 8k BPE the shipped text YAMLs use, prepared once."""
    from datamodules import TextDataModule

    dm = TextDataModule(tokenizer="bpe", bpe_vocab_size=8192, seq_len=32, batch_size=4)
    dm.prepare_data()
    dm.setup()
    return dm
