import os

import pytest

# Offline and fast: a hub id must fail at once instead of retrying for ~23 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `pytest -n N` (xdist): N workers share the cores, so each worker and every process it starts gets
# cores / N intra-op threads; N processes each spreading over every core contend.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    import torch

    from lit_vattn.experiments.reproduce import threads_per_process

    _threads = threads_per_process(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


# fixtures that train or encode for a minute or more: a test that uses one is `slow`
SLOW_FIXTURES = {"table", "ddp_run", "evaluated", "speech"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def shard_cache(tmp_path_factory):
    """One shard cache for the whole test run, so the embedded corpus is tokenized once per tokenizer."""
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


@pytest.fixture(scope="session")
def train_on(bpe_text):
    """``train_on(net, steps=40, lr=3e-3)``: AdamW steps of ``net`` on the embedded text's training
    windows (bpe_text), returning each step's loss; the shared "it learns real text" check."""
    import torch
    import torch.nn.functional as F

    def run(net, steps: int = 40, lr: float = 3e-3) -> list[float]:
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        it = iter(bpe_text.train_dataloader())
        losses = []
        for _ in range(steps):
            b = next(it)
            loss = F.cross_entropy(net(b["input"]).flatten(0, 1), b["target"].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    return run


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, bpe_text):
    """A test that runs the CLI in a fresh working directory (its runs/ land there), with the shared
    shard cache prepared."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
