"""The experiment suite: every experiment plans at every scale, with valid configs, and names its claim."""


import jax
import pytest

from conftest import REPO
from jscale import report, sweep, train

EXPERIMENTS = ("shape", "size", "sample_efficiency", "lstm", "recurrent", "compute", "critical_batch", "data",
               "efficiency")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_scale_plans_and_every_run_can_start(name):
    path = REPO / "experiments" / f"{name}.toml"
    sizes = {}
    for scale in sweep.scales(sweep.config.read_toml(path)):
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


def test_plan_prints_the_scale_and_rejects_an_unknown_one(jscale_here):
    ok = jscale_here("plan", str(REPO / "experiments" / "shape.toml"), "--scale", "full", "--no-estimate")
    assert ok.returncode == 0 and "sweep shape at scale full" in ok.stdout
    bad = jscale_here("plan", str(REPO / "experiments" / "shape.toml"), "--scale", "huge")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "jscale: error: --scale: 'huge' is not a scale of this sweep (cpu, gpu, full)"


BUDGETED = """
name = "budgeted"
[base.model]
n_layer = 2
d_model = 64
n_ctx = 256
[base.train]
batch_size = 64
steps = 3000
warmup_steps = 10
[scale.cpu]
[scale.gpu]
device = "H100"
budget_minutes = {budget}
"""


def test_a_scale_over_its_budget_is_refused_without_force_and_plan_says_so(tmp_path, jscale_here):
    (tmp_path / "over.toml").write_text(BUDGETED.format(budget=0.01))
    (tmp_path / "within.toml").write_text(BUDGETED.format(budget=60))
    plan = jscale_here("plan", str(tmp_path / "over.toml"), "--scale", "gpu", check=0)
    last = next(line for line in plan.stdout.splitlines() if line.startswith("estimated wall time"))
    assert last.startswith("estimated wall time on gpu:NVIDIA H100") and "OVER it" in last
    assert "epochs: the most repeated run sees" in plan.stdout  # and what the runs repeat of their corpus
    run = jscale_here("run", str(tmp_path / "over.toml"), "--scale", "gpu", "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "over the scale's budget of 0.01 min" in run.stderr and "--force" in run.stderr
    assert not (tmp_path / "out").exists()
    within = jscale_here("plan", str(tmp_path / "within.toml"), "--scale", "gpu")
    assert "within it" in within.stdout


@pytest.mark.parametrize("old, new, names", [("budget_minutes = 10", "budget_minutes = -1", "budget_minutes"),
                                             ('device = "H100"', 'device = "TPU v9"', "device")])
def test_scale_budget_keys_are_checked(tmp_path, old, new, names, jscale_here):
    (tmp_path / "bad.toml").write_text(BUDGETED.format(budget=10).replace(old, new))
    r = jscale_here("plan", str(tmp_path / "bad.toml"), "--scale", "gpu", "--no-estimate")
    assert r.returncode == 2 and names in r.stderr


def test_plan_says_whether_a_converged_claim_can_be_decided_and_how_often_runs_repeat_their_corpus(jscale_here):
    """shape at full: the largest model's expected improvement per doubling (the long tier's measured relation,
    about 0.79 / sqrt(tokens per parameter)) is far above 1%, and its runs repeat the built-in corpus 47 times."""
    from jscale import planning

    plan = jscale_here("plan", str(REPO / "experiments" / "shape.toml"), "--scale", "full", "--no-estimate")
    line = next(x for x in plan.stdout.splitlines() if x.startswith("convergence:"))
    assert "NOT expected to converge" in line and "extrapolated from the cooldown branches" in line
    assert "epochs: WARNING" in plan.stdout and "jscale corpus" in plan.stdout
    assert planning.expected_doubling(planning.tokens_per_param_needed()) == pytest.approx(0.01)
    assert planning.expected_doubling(100) == pytest.approx(0.079)
