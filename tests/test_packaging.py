"""The wheel a user installs: built from this checkout, it holds the library, its reference data, the typing
marker and the console script; the library's layering, checked by import-linter's contracts in pyproject.toml; and
the lint rules (ruff)."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


def test_the_wheel_holds_the_reference_data_and_the_cli(tmp_path):
    pytest.importorskip("build")
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "runs", "build", "*.egg-info",
                                                              "__pycache__", "experiments", "colab", "benchmarks"))
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
                        str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("jscale-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    reference = {p.name for p in (REPO / "jscale" / "reference_data").iterdir() if p.suffix in (".csv", ".md")}
    assert reference and {f"jscale/reference_data/{n}" for n in reference} <= names
    assert {"jscale/py.typed", "jscale/cli.py", "jscale/models/transformer.py", "jscale/data/batches.py",
            "jscale/train/step.py", "jscale/laws/chinchilla.py"} <= names
    assert not any(n.startswith(("tests/", "experiments/", "colab/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Provides-Extra: hf" in meta
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "jscale = jscale.cli:entry" in entry


def test_the_layers_hold_and_no_module_imports_upward_or_in_a_circle(tmp_path):
    """import-linter's contracts (pyproject.toml): cli on top, config and errors at the bottom, every module placed
    in a layer, no cycle between the modules of any package. It fails on an upward import (checked by adding one)."""
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "0 broken" in r.stdout


def test_the_code_passes_its_lint_rules(tmp_path):
    """ruff with pyproject.toml's rules over the library, tests, benchmarks, experiments and notebooks; and the
    check can fail: a copy of a module with an unused import is refused, naming the file and the rule."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    r = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]
    bad = tmp_path / "bad.py"
    bad.write_text((REPO / "jscale" / "errors.py").read_text().replace("from pathlib", "import os\nfrom pathlib", 1))
    r = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "--config",
                        str(REPO / "pyproject.toml"), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "bad.py:" in r.stdout and "F401 [*] `os` imported but unused" in r.stdout, r.stdout


MAX_MODULE_LINES = 560  # "about 500": a longer module says why in its docstring ("Longer than 500 lines: ...")


def test_no_module_is_long_without_saying_why():
    long = [(p.relative_to(REPO).as_posix(), n) for p in sorted((REPO / "jscale").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
            and "Longer than 500 lines:" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert not long, f"modules over {MAX_MODULE_LINES} lines that do not say why: {long}"
