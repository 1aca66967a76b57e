import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tokenized corpora go to one cache per test session (inherited by the subprocesses tests start).
os.environ.setdefault("JSCALE_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test"))

REPO = Path(__file__).resolve().parent.parent

# No persistent XLA compilation cache (the command line's default) for the tests and the processes they start: their
# programs, compiled with the optimisations off (below), compile about as fast as an entry loads, and every miss pays
# for a write (measured over the suite: 1,035 misses, 267 hits saving -4.6 s in all).
os.environ.setdefault("JSCALE_XLA_CACHE", "off")
# The tests' programs are tiny and each runs a few steps: XLA's LLVM optimisations cost more compile time than they
# save (JAX's own switch; measured on the 2-core CPU: a 2-member ensemble's steps compiled in 3.9-5.1 s instead of
# 6.5-7.3 s, each step then took 9 ms instead of 3 ms). Floating-point results can differ in the last bit from an
# optimised build, so a test compares only runs made under the same settings; benchmarks and real runs keep the
# optimisations.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Likewise XLA:CPU's newer fusion emitters: without them a tiny train step compiled in 0.45-0.54 s instead of
# 1.1-1.2 s (init and eval steps alike), at the same step time (2.2 ms against 2.4 ms for a 1-layer d_model-16 run).
# The level-1 flags are what a test that trains many steps per program asks for (the xla_optimized fixture turns
# JAX's switch off; with it on, JAX compiles at level 0 whatever these say).
if "--xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):  # (pytest-xdist's workers inherit it)
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_use_fusion_emitters=false "
                               "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true").strip()


@pytest.fixture
def xla_optimized():
    """XLA's level-1 optimisation for this test's compilations: a tiny step then compiles ~1 s slower per shape and
    runs ~9 ms faster (2-5 ms against 10-16 ms, measured on the 2-core CPU), which pays for a test that trains a few
    hundred steps per compiled program (the regime test: 18.9 s -> 12.3 s; the others measured no gain)."""
    import jax

    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A small local corpus: 30 files of varied English-like text, about 300 kB in all."""
    import random

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ("the model loss falls as a power law of parameters data and compute while shape matters little "
             "transformers keep improving across the context and recurrent networks plateau early").split()
    for i in range(30):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(1000)]
        (root / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def pypi_corpus_here(tmp_path, monkeypatch) -> Path:
    """The gpu and full scales' corpus (data.corpus = "bin:corpora/pypi", relative to the working directory) as
    `jscale plan` and the pre-training checks see it, without its 205 MB: the working directory moves to tmp_path,
    whose corpora/pypi holds meta.json, a sparse train.bin of the committed manifest's size (epochs are counted from
    it) and small real validation and test splits."""
    import json

    manifest = json.loads((REPO / "experiments" / "pypi-corpus.manifest.json").read_text())
    corpus = tmp_path / "corpora" / "pypi"
    corpus.mkdir(parents=True)
    (corpus / "meta.json").write_text(json.dumps({"vocab_size": 256, "bytes_per_token": 1}))
    with open(corpus / "train.bin", "wb") as f:
        f.truncate(manifest["splits"]["train"]["tokens"])
    text = (REPO / "jscale" / "grid.py").read_bytes()
    (corpus / "val.bin").write_bytes(text)
    (corpus / "test.bin").write_bytes(text[::-1])
    monkeypatch.chdir(tmp_path)
    return corpus


def jscale_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "jscale.cli", *args]


def wait_for_training(proc: subprocess.Popen, out: Path, timeout: float = 240, min_step: int = 0) -> None:
    """Until the sweep in `out` has recorded a training curve point at min_step or later (or the process has ended,
    or time is up): the moment to interrupt a running `jscale run`."""
    import sqlite3
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(out / "results.sqlite") as c:
                if c.execute("SELECT COUNT(*) FROM curves WHERE step >= ?", (min_step,)).fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)


@pytest.fixture
def jscale_here(capfd, monkeypatch):
    """Run a `jscale` command in this process: `cli.main`, the console script's own code path, with what it prints
    read at the file descriptors. For commands whose subject is not the process itself (a re-run after damage, a
    reference run): no JAX start-up, and compiled steps are shared with the earlier commands of the same shapes.
    Signals, kills, concurrent jobs and commands whose checkpoint write is meant to fail (cli.main then ends the
    process at once, orbax's threads still failing) stay in real processes (jscale_cmd)."""
    from jscale import cli

    def run(*args: str, env: dict[str, str] | None = None, check: int | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capfd.readouterr()
            code = cli.main(list(args))
            out, err = capfd.readouterr()
        if check is not None:
            assert code == check, (code, out[-2000:], err[-3000:])
        return subprocess.CompletedProcess(["jscale", *args], code, out, err)  # as a process's would read

    return run
