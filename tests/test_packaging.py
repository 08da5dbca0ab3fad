"""What a clone or an install of the project holds."""

import shutil
import subprocess

import pytest
from helpers import ROOT


def test_no_source_or_config_file_is_hidden_by_gitignore():
    """A file the suite ships (code, configs, tests, results) must not match .gitignore: once a
    pattern ('data/') silently kept configs/data/mqar.yaml out of the repository, and only a clean
    clone failed. Checked in a git checkout; a tarball has nothing to compare."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shipped = [
        "configs",
        "lit_vattn",
        "datamodules",
        "scripts",
        "benchmarks",
        "tests",
        "results",
        ".ci",
        "README.md",
        "pyproject.toml",
    ]
    out = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", *shipped],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    hidden = [p for p in out if "__pycache__" not in p and not p.endswith(".pyc")]
    assert not hidden, f"ignored by .gitignore, so never committed: {hidden} (narrow the pattern in .gitignore)"


def test_every_python_folder_and_the_configs_ship_in_the_wheel():
    """pyproject lists the packages (so the configs can travel as lit_vattn/configs): a new
    subpackage missing from that list would install without its code."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("lit_vattn", "datamodules")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert setup["package-dir"]["lit_vattn.configs"] == "configs"
    deepest = max(len(p.relative_to(ROOT / "configs").parts) for p in (ROOT / "configs").rglob("*.yaml"))
    assert deepest <= 3  # package-data's globs reach configs/<group>/<subgroup>/<file>.yaml
    # the installed suite finds the configs where the wheel puts them when there is no checkout
    from lit_vattn.arch import registry

    assert registry.CONFIG_DIR == ROOT / "configs" and registry.config_path("va").is_file()
