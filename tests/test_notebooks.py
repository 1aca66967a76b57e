"""Every Colab notebook runs top to bottom at its smallest size (JSCALE_NOTEBOOK_SCALE=smoke) in a real kernel."""


import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))


def test_there_are_three_notebooks_each_linked_from_the_readme():
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_quickstart.ipynb", "02_architectures.ipynb", "03_fitting.ipynb"]
    readme = (REPO / "README.md").read_text()
    for name in names:
        assert f"colab.research.google.com/github/jscale/jscale/blob/main/colab/{name}" in readme


def test_the_notebooks_install_the_jax_stack_the_tests_run():
    """constraints.txt pins what `make test` installs (checked here against this environment, in which the notebooks
    below run), every notebook installs jscale with it, and each names the repository pyproject.toml names (the
    one place to change for a fork) and how to use a local wheel."""
    import re
    import tomllib
    from importlib.metadata import version

    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M))
    assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"} <= set(pins)
    assert {name: version(name) for name in pins} == pins
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    for path in NOTEBOOKS:
        install = next(c.source for c in nbformat.read(path, as_version=4).cells if "pip -q install" in c.source)
        assert f'REPO_URL = "{url}"' in install and "/constraints.txt" in install and "-c {CONSTRAINTS}" in install
        assert "local wheel" in install and "SOURCE = " in install


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JSCALE_NOTEBOOK_SCALE", "smoke")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    # Runs in a scratch directory (the notebooks write runs/...); an error in any cell fails the test.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "scale smoke" in text


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_the_larger_notebook_sizes_make_valid_sweeps(scale, capsys):
    """The cells tagged "specs" build each notebook's sweeps; at the sizes the tests do not run, every run must
    still be a valid, runnable config."""
    from jscale import sweep, train

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cells = [c.source for c in nb.cells if "specs" in c.metadata.get("tags", [])]
        if not cells:
            continue
        namespace = {"SCALE": scale}
        for source in cells:
            exec(source, namespace)
        specs = namespace.get("specs") or {"spec": namespace["spec"]}
        for spec in specs.values():
            for run in sweep.expand(spec).runs:
                train.check_intervals(run.cfg.train)
                train.check_runnable(run.cfg)
