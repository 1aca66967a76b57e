"""The experiment suite: every experiment plans at every scale, with valid configs, and names its claim."""


import jax
import pytest

from conftest import REPO
from jscale import accounting, planning, report, sweep, train

EXPERIMENTS = ("shape", "size", "sample_efficiency", "lstm", "recurrent", "compute", "critical_batch", "data",
               "efficiency")


def _exact_flops(sw) -> float:
    return sum(r.cfg.train.steps * r.cfg.train.batch_size * r.cfg.model.n_ctx *
               accounting.account(r.cfg.model).train_flops_exact for r in sw.runs)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_scale_plans_and_every_run_can_start(name, pypi_corpus_here):
    path = REPO / "experiments" / f"{name}.toml"
    compute = {}
    for scale in sweep.scales(sweep.config.read_toml(path)):
        sw = sweep.load(path, scale=scale)
        assert sw.claim and sw.analysis == name and sw.scale == scale
        for run in sw.runs:  # what `jscale run` checks before it trains anything
            train.check_intervals(run.cfg.train)
            if run.cfg.model.lstm_impl == "cudnn" and jax.default_backend() != "gpu":
                continue  # rightly refused here: cuDNN's LSTM is the gpu scales' (checked on a GPU)
            train.check_runnable(run.cfg)
        compute[scale] = _exact_flops(sw)
    assert compute["cpu"] < compute["gpu"] < compute["full"]  # (the converged gpu/full tiers train smaller models
    # than the cpu tier's largest, for far longer)
    assert name in report.SECTIONS


def test_plan_prints_the_scale_and_rejects_an_unknown_one(jscale_here, pypi_corpus_here):
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


def test_plan_says_whether_a_converged_claim_can_be_decided_and_how_often_runs_repeat_their_corpus(
        jscale_here, pypi_corpus_here):
    """shape at cpu: the largest model's expected improvement per doubling (the long tier's measured relation,
    about 0.79 / sqrt(tokens per parameter)) is far above 1%; compute at full repeats the pypi corpus ~340 times."""
    plan = jscale_here("plan", str(REPO / "experiments" / "shape.toml"), "--scale", "cpu", "--no-estimate")
    line = next(x for x in plan.stdout.splitlines() if x.startswith("convergence:"))
    assert "NOT expected to converge" in line and "extrapolated from the cooldown branches" in line
    plan = jscale_here("plan", str(REPO / "experiments" / "compute.toml"), "--scale", "full", "--no-estimate")
    assert "epochs: WARNING" in plan.stdout and "jscale corpus" in plan.stdout
    assert planning.SEED_SPREAD * planning.expected_doubling(planning.tokens_per_param_needed()) == pytest.approx(0.01)
    assert planning.expected_doubling(100) == pytest.approx(0.079)


@pytest.mark.parametrize("name", planning.CONVERGED_ANALYSES)
def test_the_gpu_and_full_tiers_of_every_converged_claim_are_sized_to_converge(name, jscale_here, pypi_corpus_here):
    """Each converged claim's gpu and full scales train their largest model for more tokens per parameter than the
    1% criterion needs (by the measured relation), on at most 4 epochs of the pypi corpus, and plan without the
    budget line hiding what they would cost (an over-budget scale says so, with the device time)."""
    for scale in ("gpu", "full"):
        plan = jscale_here("plan", str(REPO / "experiments" / f"{name}.toml"), "--scale", scale, "--no-estimate",
                           check=0)
        line = next(x for x in plan.stdout.splitlines() if x.startswith("convergence:"))
        assert ": expected to converge (every run" in line, (scale, line)
        tpp = float(line.split(" sees ")[1].split(" tokens per parameter")[0].replace(",", ""))
        assert planning.tokens_per_param_needed() < tpp < 1.5 * planning.tokens_per_param_needed()
        epochs = next(x for x in plan.stdout.splitlines() if x.startswith("epochs:"))
        assert "WARNING" not in plan.stdout and "185,079,338 train tokens" in epochs, (scale, epochs)
