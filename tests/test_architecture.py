"""The layer contracts (docs/architecture.md), checked with import-linter, imports inside functions included.

import-linter walks a package's folder, and moodstream's parts live in sibling folders mapped into one
namespace (pyproject.toml [tool.setuptools] package-dir), so the check runs on a copy laid out as the
installed package.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAX_PRODUCT_FILE_LINES = 500
GENERATED = {"moodstream_pb2.py", "moodstream_pb2_grpc.py"}


def package_folders() -> dict[str, Path]:
    """Every package of the distribution -> the folder its modules are in."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    folders = {}
    for package in setuptools["packages"]:
        mapped = max((name for name in mapping if package == name or package.startswith(name + ".")), key=len)
        rest = package[len(mapped):].lstrip(".").replace(".", "/")
        folders[package] = ROOT / mapping[mapped] / rest
    return folders


def installed_layout(target: Path) -> Path:
    for package, folder in package_folders().items():
        destination = target / package.replace(".", "/")
        destination.mkdir(parents=True, exist_ok=True)
        for module in folder.glob("*.py"):
            shutil.copy(module, destination / module.name)
    return target


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    command = Path(sys.executable).with_name("lint-imports")
    # From inside the copy: the repository's own moodstream/ folder must not shadow it.
    return subprocess.run([str(command), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)


def contract_names() -> list[str]:
    return [contract["name"] for contract in PYPROJECT["tool"]["importlinter"]["contracts"]]


def test_every_layer_contract_is_kept(tmp_path):
    result = lint_imports(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in contract_names():
        assert f"{name} KEPT" in result.stdout
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, planted, broken", [
    # the core reaching up into a part, inside a function where no import-time check would see it
    ("moodstream/ids.py", "def _planted():\n    from moodstream.server import app\n", "core"),
    # the agent pulling in torch
    ("moodstream/agent/events.py", "def _planted():\n    import torch\n", "light-parts"),
    # a part importing the composition layer
    ("moodstream/trainer/metrics.py", "def _planted():\n    from moodstream.compose import demo\n", "layers"),
    # one part importing a sibling part
    ("moodstream/dashboard/feed.py", "def _planted():\n    import moodstream.agent.client\n", "layers"),
])
def test_a_planted_violation_breaks_its_contract(tmp_path, module, planted, broken):
    tree = installed_layout(tmp_path)
    with open(tree / module, "a") as file:
        file.write("\n\n" + planted)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == broken)
    assert f"{contract['name']} BROKEN" in result.stdout


def test_the_core_contract_lists_every_core_module():
    """A module added directly under moodstream/ is core, so the contract must name it to check it."""
    core = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "core")
    folders = package_folders()
    on_disk = {f"moodstream.{path.stem}" for path in folders["moodstream"].glob("*.py") if path.stem != "__init__"}
    on_disk |= {package for package in folders if package.count(".") == 1}
    parts = {"moodstream.agent", "moodstream.server", "moodstream.trainer", "moodstream.model",
             "moodstream.dashboard", "moodstream.compose"}
    assert set(core["source_modules"]) == on_disk - parts
    assert set(core["forbidden_modules"]) >= parts
    assert "import " not in (folders["moodstream"] / "__init__.py").read_text()


def test_no_product_file_does_several_jobs_by_size():
    too_long = {}
    for folder in package_folders().values():
        for module in folder.glob("*.py"):
            lines = len(module.read_text().splitlines())
            if lines > MAX_PRODUCT_FILE_LINES and module.name not in GENERATED:
                too_long[str(module.relative_to(ROOT))] = lines
    assert not too_long, f"split these along their seams (at most {MAX_PRODUCT_FILE_LINES} lines): {too_long}"


def test_the_contracts_name_the_product_layout():
    layers = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}
    assert named == {"moodstream.compose", "moodstream.server", "moodstream.trainer", "moodstream.agent",
                     "moodstream.dashboard", "moodstream.model"}
