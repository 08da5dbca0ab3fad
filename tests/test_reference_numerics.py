"""The reader refactor changed no number: every architecture and switch gives, for one seed and
batch, bit-identical logits, initial parameters and gradients to the code before it (commit
7555359, references in tests/reference/numerics.json, made by tests/reference/numerics.py)."""

import json
from pathlib import Path

import pytest

import sys

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import numerics  # noqa: E402

REF = json.loads((Path(__file__).parent / "reference" / "numerics.json").read_text())


def _same_platform() -> bool:
    return numerics.probe() == REF["probe"]


@pytest.mark.skipif(not _same_platform(), reason="this CPU's torch kernels round differently from the one the references were made on")
@pytest.mark.parametrize("name", sorted(n for n in REF["cases"] if not n.startswith("las")))
def test_bit_identical_to_the_code_before_the_reader_refactor(name):
    got, ref = numerics.compute(name), REF["cases"][name]
    diffs = []
    for kind in ("params", "grads"):
        assert got[kind].keys() == ref[kind].keys(), f"{name}: {kind} names changed"
        for n in ref[kind]:
            if got[kind][n]["sha256"] != ref[kind][n]["sha256"]:
                diffs.append(f"{kind} {n}: sum {got[kind][n]['sum']:.9g} vs {ref[kind][n]['sum']:.9g}")
    if got["logits"]["sha256"] != ref["logits"]["sha256"]:
        diffs.append(f"logits: sum {got['logits']['sum']:.9g} vs {ref['logits']['sum']:.9g}")
    assert not diffs, f"{name}: " + "; ".join(diffs)


class _FeaturesAtTheirBlock(numerics.LAS):
    """LAS computing each feature map right after its block, as the code before the refactor did
    (now they are computed at the final layer, from the recorded states)."""

    def update(self, l, s, stream, out, mem):
        stream = super().update(l, s, stream, out, mem)
        if s == "mlp" and l in self.layers:
            self.slot(mem).setdefault("feats", []).append(self.phi[str(l)](stream))
        return stream

    def features(self, mem):
        return self.slot(mem)["feats"]


@pytest.mark.skipif(not _same_platform(), reason="this CPU's torch kernels round differently from the one the references were made on")
@pytest.mark.parametrize("name", sorted(n for n in REF["cases"] if n.startswith("las")))
def test_las_differs_only_in_the_order_gradients_are_summed(name, monkeypatch):
    """LAS's logits and initial parameters are bit-identical to the old code; its gradients
    differ in the last bits of float32 only because autograd now adds the feature map's gradient
    into the residual state h_s after the later blocks' gradient rather than before. Computing the
    features at their block again gives the old bits exactly, which proves that nothing else
    changed."""
    now = numerics.compute(name)
    ref = REF["cases"][name]
    assert now["logits"]["sha256"] == ref["logits"]["sha256"]
    assert all(now["params"][n]["sha256"] == ref["params"][n]["sha256"] for n in ref["params"])
    for n in ref["grads"]:  # the accumulation order moves the sums by float32 rounding only
        assert now["grads"][n]["sum"] == pytest.approx(ref["grads"][n]["sum"], rel=1e-5, abs=1e-6), n
    make, extra = numerics.CASES[name]
    kw = make().switches()
    monkeypatch.setitem(numerics.CASES, name, (lambda: _FeaturesAtTheirBlock(**kw), extra))
    old_order = numerics.compute(name)
    assert all(old_order["grads"][n]["sha256"] == ref["grads"][n]["sha256"] for n in ref["grads"])
