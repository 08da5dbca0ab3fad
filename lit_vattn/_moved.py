"""Module paths of 0.2, which saved run configs (``class_path: lit_vattn.runs.RunCSVLogger``) and
checkpoints still name: importing one gives the module at its home since 0.3."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "lit_vattn.config": "lit_vattn.model.config",
    "lit_vattn.attention": "lit_vattn.model.attention",
    "lit_vattn.rope": "lit_vattn.model.rope",
    "lit_vattn.flops": "lit_vattn.model.flops",
    "lit_vattn.module": "lit_vattn.train.module",
    "lit_vattn.callbacks": "lit_vattn.train.callbacks",
    "lit_vattn.metrics": "lit_vattn.train.metrics",
    "lit_vattn.runs": "lit_vattn.train.runs",
    "lit_vattn.cli": "lit_vattn.train.cli",
    "lit_vattn.reproduce": "lit_vattn.experiments.reproduce",
    "lit_vattn.records": "lit_vattn.experiments.records",
    "lit_vattn.tables": "lit_vattn.experiments.tables",
    "lit_vattn.stats": "lit_vattn.experiments.stats",
    "lit_vattn.baselines": "lit_vattn.experiments.baselines",
    "lit_vattn.curves": "lit_vattn.experiments.curves",
    "lit_vattn.method_table": "lit_vattn.arch.method_table",
    "lit_vattn.loader": "lit_vattn.tools.loader",
    "lit_vattn.analyze": "lit_vattn.tools.analyze",
    "lit_vattn.generate": "lit_vattn.tools.generate",
    "lit_vattn.lm_eval_adapter": "lit_vattn.tools.lm_eval_adapter",
    "lit_vattn.prepare": "lit_vattn.tools.prepare",
}
"""0.2 module -> its module now (``lit_vattn.model`` kept its name: it is the model package)."""


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    homes: dict = {}  # old name -> the spec of its module now

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self.homes[spec.name] = module.__spec__
        return module  # the import system stamps the old name's spec on it next: exec_module undoes that

    def exec_module(self, module):  # already executed at its new home
        home = self.homes[module.__spec__.name]
        module.__spec__, module.__loader__ = home, home.loader


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before path finders: a stale 0.2 file must not shadow the move
