"""One registry: every list of methods derives from it, so a method is added by its reader file
and its config alone; the README's method table is the registry's."""

import argparse
import importlib
import shutil
import sys

import pytest
from helpers import ROOT  # noqa: E402

from lit_vattn.arch import registry as reg
from lit_vattn.arch.method_table import method_table
from lit_vattn.experiments import reproduce
from lit_vattn.train.cli import cli_main

TOY = '''
"""A toy method outside the package: after each block, lam_l x0 (the embedding) is added; lam zero at init."""
import torch
from torch import nn

from lit_vattn.arch.base import Arch
from lit_vattn.arch.registry import register


@register(title="Toy embedding gate", paper="none", reads="the embedding, gated, after each block", exact_at_init=True)
class ToyGate(Arch):
    name = "toy-gate"

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.init = init

    def bind(self, cfg):
        super().bind(cfg)
        self.lam = nn.Parameter(torch.full((cfg.n_layer,), self.init))
        return self

    def update(self, l, s, stream, out, mem):
        new = super().update(l, s, stream, out, mem)
        return new + self.lam[l] * mem.x0 if s == "mlp" else new
'''


def test_one_name_per_method_and_a_config_for_each(tmp_path):
    for name, m in reg.methods().items():
        assert m.cls.name == name and reg.config_path(name).is_file(), name
        for c in m.controls:
            assert reg.config_path(c) == ROOT / "configs/arch/controls" / f"{c}.yaml", c
    # every shipped config is a method or a control of one: nothing stands outside the registry
    assert set(reg.arch_configs()) == set(reg.methods()) | set(reg.control_of())
    assert reg.seed_methods() == ["vanilla", "va", "sla", "las"]


def test_a_method_registered_outside_the_package_is_in_every_list(tmp_path, monkeypatch):
    monkeypatch.setattr(reg, "_METHODS", dict(reg._METHODS))  # the toy leaves the registry with the test
    (tmp_path / "toy_gate_method.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_gate_method", raising=False)
    importlib.import_module("toy_gate_method")
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    (configs / "arch" / "toy-gate.yaml").write_text(
        "model:\n  init_args:\n    arch:\n      class_path: toy_gate_method.ToyGate\n"
    )
    # reproduce's default request, its check of --archs, its configs
    assert "toy-gate" in reg.default_request()
    request = argparse.Namespace(archs=",".join(reg.default_request()), seeds="0", modality="text")
    assert "toy-gate" in reproduce.parse_request(request, configs)[0]
    assert reproduce.configs("text", "toy-gate", "tiny", configs)[3] == str(configs / "arch" / "toy-gate.yaml")
    # the contract tests
    import test_method_contract as contract

    monkeypatch.setattr(contract, "CASES", contract.cases())
    for check in (
        contract.test_causal,
        contract.test_finite_loss_and_gradient_in_every_parameter,
        contract.test_same_base_init_as_vanilla,
        contract.test_the_registered_init_claim_holds,
        contract.test_kv_cache_gives_the_full_forward,
        contract.test_the_logit_lens_reads_states_the_output_depends_on,
        contract.test_switches_are_exactly_the_constructor_arguments,
    ):
        check("toy-gate")
    # the method table, and a run of its config named after it
    assert "| **`toy-gate`** Toy embedding gate |" in method_table()
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(configs / "data/text.yaml"),
            "--config",
            str(configs / "arch/toy-gate.yaml"),
            "--config",
            str(configs / "trainer/cpu.yaml"),
            "--trainer.fast_dev_run",
            "true",
            "--model.init_args.config.n_layer",
            "2",
            "--model.init_args.config.d_model",
            "64",
            "--model.init_args.config.n_head",
            "2",
            "--data.init_args.seq_len",
            "32",
        ]
    )
    assert cli.model.net.arch.name == "toy-gate"


def test_a_second_method_under_a_taken_name_is_refused():
    from lit_vattn.arch.base import Arch

    with pytest.raises(ValueError, match="method name 'va' is registered twice"):

        @reg.register(title="x", paper="x", reads="x", exact_at_init=True)
        class Impostor(Arch):
            name = "va"


def test_the_readme_method_table_is_the_registrys():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- method table: python -m lit_vattn.arch.method_table -->\n", "<!-- end of method table -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == method_table()
