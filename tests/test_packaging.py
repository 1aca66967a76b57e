"""The wheel a user installs: built from this checkout, it holds the library, its reference data, the typing
marker and the console script."""

import shutil
import subprocess
import sys
import zipfile

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
    assert {"jscale/py.typed", "jscale/cli.py", "jscale/models/transformer.py"} <= names
    assert not any(n.startswith(("tests/", "experiments/", "colab/")) for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and "Provides-Extra: hf" in meta
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "jscale = jscale.cli:entry" in entry
