"""The experiment suite: every experiment plans at every scale, with valid configs, and names its claim."""

import subprocess

import jax
import pytest

from conftest import REPO, jscale_cmd
from jscale import report, sweep, train

EXPERIMENTS = ("shape", "size", "sample_efficiency", "lstm", "recurrent", "compute", "critical_batch", "data",
               "efficiency")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_scale_plans_and_every_run_can_start(name):
    path = REPO / "experiments" / f"{name}.toml"
    sizes = {}
    for scale in ("cpu", "gpu", "full"):
        sw = sweep.load(path, scale=scale)
        assert sw.claim and sw.analysis == name and sw.scale == scale
        for run in sw.runs:  # what `jscale run` checks before it trains anything
            train.check_intervals(run.cfg.train)
            if run.cfg.model.lstm_impl == "cudnn" and jax.default_backend() != "gpu":
                continue  # rightly refused here: cuDNN's LSTM is the gpu scales' (checked on a GPU)
            train.check_runnable(run.cfg)
        sizes[scale] = max(r.cfg.model.d_model for r in sw.runs)
    assert sizes["cpu"] < sizes["gpu"] < sizes["full"]
    assert name in report.SECTIONS


def test_plan_prints_the_scale_and_rejects_an_unknown_one():
    ok = subprocess.run(jscale_cmd("plan", str(REPO / "experiments" / "shape.toml"), "--scale", "full",
                                   "--no-estimate"),
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "sweep shape at scale full" in ok.stdout
    bad = subprocess.run(jscale_cmd("plan", str(REPO / "experiments" / "shape.toml"), "--scale", "huge"),
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "jscale: error: --scale: 'huge' is not a scale of this sweep (cpu, gpu, full)"
