"""Sweep specs: axes, generators, grouping into ensembles, the plan, and one-line errors."""

import math

import pytest

from jscale import accounting, sweep
from jscale.config import ConfigError

BASE = {"model": {"n_ctx": 32}, "data": {"eval_windows": 8},
        "train": {"batch_size": 4, "steps": 50, "warmup_steps": 5, "eval_every": 10, "checkpoint_every": 10}}


def expand(*axes, base=BASE):
    return sweep.expand({"name": "t", "base": base, "axis": list(axes)})


def test_cartesian_and_zipped_axes():
    sw = expand({"key": "train.seed", "values": [0, 1, 2]},
                {"zip": {"model.d_model": [32, 64], "model.n_heads": [2, 4]}})
    assert len(sw.runs) == 6
    assert {(r.cfg.train.seed, r.cfg.model.d_model, r.cfg.model.n_heads) for r in sw.runs} == {
        (s, d, h) for s in (0, 1, 2) for d, h in ((32, 2), (64, 4))}
    assert len({r.run_id for r in sw.runs}) == 6
    # Run ids are a stable hash of the config: the same spec gives the same ids.
    assert [r.run_id for r in sw.runs] == [r.run_id for r in expand(
        {"key": "train.seed", "values": [0, 1, 2]}, {"zip": {"model.d_model": [32, 64], "model.n_heads": [2, 4]}}).runs]


def test_sizes_generator_spans_N_on_a_log_scale():
    sw = expand({"generator": "sizes", "N_min": 1e5, "N_max": 1e7, "count": 5, "aspect_ratio": 32, "d_head": 16})
    Ns = sorted(accounting.account(r.cfg.model).N for r in sw.runs)
    assert len(Ns) == 5
    for got, want in zip(Ns, [1e5 * 10 ** (0.5 * i) for i in range(5)]):
        assert got == pytest.approx(want, rel=0.35)
    for r in sw.runs:
        assert r.cfg.model.d_model % 16 == 0 and r.cfg.model.d_head == 16


@pytest.mark.parametrize("axis", [
    {"N_min": 3e3, "N_max": 6e4, "count": 5, "n_layer": 2, "d_head": 8},  # rounding gave 1.54e3 once
    {"N_min": 1.5e3, "N_max": 3.5e4, "count": 5, "n_layer": 2, "d_head": 8},  # and 3.84e4 at the top
    {"N_min": 3e5, "N_max": 1.5e6, "count": 2, "n_layer": 2, "d_head": 32, "kind": "lstm"},
    {"N_min": 2e4, "N_max": 9e5, "count": 6, "aspect_ratio": 16, "d_head": 16},
])
def test_sizes_stay_within_the_requested_range(axis):
    """Every N the sizes generator gives (counted by jscale.accounting, independently of the generator's own
    arithmetic) lies in [N_min, N_max]; widths remain multiples of d_head."""
    kind = axis.pop("kind", "transformer")
    spec = [{"key": "model.kind", "values": [kind]}, {"generator": "sizes", **axis}]
    sw = expand(*spec)
    for r in sw.runs:
        assert axis["N_min"] <= accounting.account(r.cfg.model).N <= axis["N_max"], r.name
        assert r.cfg.model.d_model % axis["d_head"] == 0


def test_a_range_no_width_can_reach_is_one_line():
    with pytest.raises(ConfigError, match=r"axis\[0\]: no width \(a multiple of d_head = 32\) at 2 layers gives N in "
                                          r"\[30000, 35000\]"):
        expand({"generator": "sizes", "N_min": 3e4, "N_max": 3.5e4, "count": 2, "n_layer": 2, "d_head": 32})


def test_shapes_at_fixed_N_vary_the_aspect_ratio():
    sw = expand({"generator": "shapes", "N": 2e6, "aspect_ratios": [8, 32, 128], "d_head": 16})
    ratios = [r.cfg.model.d_model / r.cfg.model.n_layer for r in sw.runs]
    assert ratios == sorted(ratios) and ratios[-1] / ratios[0] > 8
    for r in sw.runs:
        assert accounting.account(r.cfg.model).N == pytest.approx(2e6, rel=0.25)


def test_ff_ratios_and_heads():
    sw = expand({"generator": "ff_ratios", "N": 1e6, "n_layer": 2, "ratios": [1, 4, 16], "d_head": 8})
    got = sorted(r.cfg.model.d_ff_ / r.cfg.model.d_model for r in sw.runs)
    assert got == pytest.approx([1, 4, 16], rel=0.1)
    for r in sw.runs:
        assert accounting.account(r.cfg.model).N == pytest.approx(1e6, rel=0.25)
    heads = expand({"key": "model.d_model", "values": [64]}, {"generator": "heads", "d_heads": [8, 16, 64, 48]})
    assert sorted(r.cfg.model.n_heads for r in heads.runs) == [1, 4, 8]  # 48 does not divide 64


def test_isoflop_generator_spends_each_budget():
    sw = expand({"generator": "isoflop", "budgets": [1e12, 4e12],
                 "sizes": {"N_min": 1e4, "N_max": 3e5, "count": 4, "d_head": 16}, "min_steps": 5})
    budgets = {}
    for r in sw.runs:
        C = r.tags["isoflop.budget"]
        acc = accounting.account(r.cfg.model)
        tokens_per_step = r.cfg.train.batch_size * r.cfg.model.n_ctx
        spent = 6 * acc.N_total * r.cfg.train.steps * tokens_per_step
        assert spent == pytest.approx(C, abs=6 * acc.N_total * tokens_per_step)  # within one step's rounding
        budgets.setdefault(C, []).append(acc.N_total)
    assert set(budgets) == {1e12, 4e12} and all(len(v) >= 3 for v in budgets.values())


def test_data_sizes_seeds_and_kaplan_lr():
    sw = expand({"generator": "data_sizes", "values": [1e4, 1e5]}, {"generator": "seeds", "values": [0, 1]},
                {"generator": "kaplan_lr"})
    assert sorted({r.cfg.data.max_train_tokens for r in sw.runs}) == [10_000, 100_000]
    N = accounting.account(sw.runs[0].cfg.model).N
    assert sw.runs[0].cfg.train.lr == pytest.approx(0.003239 - 0.0001395 * math.log(N))


def test_groups_share_shapes_and_chunk_by_ensemble_size():
    sw = expand({"key": "model.d_model", "values": [32, 64]}, {"key": "train.seed", "values": [0, 1, 2]},
                {"key": "train.lr", "values": [1e-3, 3e-3]}, {"generator": "data_sizes", "values": [5000, 50000]})
    groups = sw.groups(64)
    assert len(groups) == 2 and sorted(len(g.runs) for g in groups) == [12, 12]
    for g in groups:
        assert len({r.cfg.model.d_model for r in g.runs}) == 1
    small = sw.groups(5)
    assert sorted(len(g.runs) for g in small) == [2, 2, 5, 5, 5, 5]
    assert [g.group_id for g in sw.groups(5)] == [g.group_id for g in small]  # stable across calls
    # A size written out at its default is the same shape: one group, one compilation (programs.program_key agrees).
    sw = expand({"zip": {"model.d_ff": [None, 128, 256], "model.d_attn": [32, None, 32], "train.seed": [0, 1, 2]}},
                base={**BASE, "model": {**BASE["model"], "d_model": 32}})
    assert [len(g.runs) for g in sw.groups(8)] == [2, 1]
    from jscale.train import programs

    keys = {programs.program_key([r.cfg], True, None) for r in sw.runs}
    assert len(keys) == 2


@pytest.mark.parametrize("spec, message", [
    ({"axis": [{"key": "model.d_modle", "values": [1]}]}, "model.d_modle: unknown config key"),
    ({"axis": [{"key": "model.d_model", "values": []}]}, "axis[0].values: expected a non-empty list"),
    ({"axis": [{"zip": {"model.d_model": [32, 64], "model.n_heads": [2]}}]}, "axis[0].zip: lists must have equal"),
    ({"axis": [{"generator": "sizez"}]}, "axis[0].generator: 'sizez' is not one of"),
    ({"axis": [{"generator": "sizes", "N_min": 1e4, "count": 3}]}, "axis[0].N_max: missing"),
    ({"axis": [{"key": "model.n_heads", "values": [3]}]}, "model.n_heads: d_attn = 128 is not divisible"),
    ({"axes": []}, "axes: unknown sweep key"),
    ({"axis": [{"key": "train.seed"}, {}]}, "axis[0].values: expected a non-empty list"),
])
def test_invalid_specs_name_the_key(spec, message):
    with pytest.raises(ConfigError) as e:
        sweep.expand({"base": BASE, **spec})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_plan_cli(tmp_path, repo, jscale_here):
    r = jscale_here("plan", str(repo / "experiments" / "quickstart.toml"), "--no-estimate", check=0)
    assert "estimated compute" in r.stdout and "PF-days" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[axis]]\nkey = "model.n_layer"\nvalues = [0]\n')
    r = jscale_here("plan", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "model.n_layer: must be positive, got 0" in r.stderr


SCALED = {"name": "s", "base": BASE, "axis": [{"key": "model.d_model", "values": [32, 64]}],
          "scale": {"cpu": {}, "gpu": {"train.steps": 80, "axis.0.values": [64, 128, 256]}}}


def test_scales_pick_base_keys_and_axis_fields_from_one_file():
    cpu = sweep.expand(SCALED)  # cpu is the default when a file has scales
    assert cpu.scale == "cpu" and [r.cfg.model.d_model for r in cpu.runs] == [32, 64]
    assert {r.cfg.train.steps for r in cpu.runs} == {50}
    gpu = sweep.expand(SCALED, scale="gpu")
    assert [r.cfg.model.d_model for r in gpu.runs] == [64, 128, 256]
    assert {r.cfg.train.steps for r in gpu.runs} == {80}
    assert SCALED["axis"][0]["values"] == [32, 64]  # the spec itself is not modified


@pytest.mark.parametrize("scale, bad, message", [
    ("tpu", {}, "--scale: 'tpu' is not a scale of this sweep (cpu, gpu)"),
    ("gpu", {"axis.3.values": [1]}, 'scale.gpu."axis.3.values": expected axis.I.FIELD with I from 0 to 0'),
    ("gpu", {"modle.d_model": 1}, 'scale.gpu."modle.d_model": expected section.key'),
    ("gpu", {"model.d_modl": 1}, "model.d_modl: unknown config key"),
])
def test_scale_errors_name_the_problem(scale, bad, message):
    spec = {**SCALED, "scale": {"cpu": {}, "gpu": bad}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sweep.expand(spec, scale=scale)


def test_shape_grid_varies_one_thing_at_a_time_at_each_N():
    sw = expand({"generator": "shape_grid", "N": [2e5, 1e6], "aspect_ratio": 16, "d_head": 16,
                 "aspect_ratios": [4, 64], "ff_ratios": [1, 16], "d_heads": [8, 32]})
    for N in (2e5, 1e6):
        runs = {r.tags["shape.vary"]: r for r in sw.runs
                if r.tags["shape.N"] == N and r.tags["shape.vary"] == "reference"}
        ref = runs["reference"].cfg.model
        assert ref.d_ff_ == 4 * ref.d_model and ref.d_head == 16
        for r in (r for r in sw.runs if r.tags["shape.N"] == N):
            m, vary = r.cfg.model, r.tags["shape.vary"]
            assert accounting.account(m).N == pytest.approx(N, rel=0.35)
            if vary == "aspect_ratio":
                assert m.d_ff_ == 4 * m.d_model and m.d_head == 16 and m.n_layer != ref.n_layer
            elif vary == "ff_ratio":
                assert m.n_layer == ref.n_layer and m.d_ff_ / m.d_model in (1, 16)
            elif vary == "d_head":
                assert (m.n_layer, m.d_model, m.d_ff_) == (ref.n_layer, ref.d_model, ref.d_ff_) and m.d_head in (8, 32)


def test_sizes_keep_each_lstm_depth_and_size_it_by_width():
    sw = expand({"zip": {"model.kind": ["lstm", "lstm", "transformer"], "model.n_layer": [1, 4, 2]}},
                {"generator": "sizes", "N_min": 1e5, "N_max": 1e6, "count": 2, "n_layer": 2, "d_head": 16})
    for family in ((("lstm", 1), ("lstm", 4), ("transformer", 2))):
        runs = [r for r in sw.runs if (r.cfg.model.kind, r.cfg.model.n_layer) == family]
        Ns = sorted(accounting.account(r.cfg.model).N for r in runs)
        # each target's nearest width (a multiple of 16) whose N, by the family's formula, lies in [1e5, 1e6]
        kind, L = family
        per_layer = 8 if kind == "lstm" else 12
        reachable = [per_layer * L * d * d for d in range(16, 1024, 16) if 1e5 <= per_layer * L * d * d <= 1e6]
        assert Ns == [min(reachable, key=lambda n: abs(math.log(n / t))) for t in (1e5, 1e6)]


def test_a_sweep_directory_holds_one_sweep_at_one_scale(tmp_path):
    from jscale import grid

    grid.check_sweep_dir(sweep.expand(SCALED), tmp_path)
    grid.check_sweep_dir(sweep.expand(SCALED), tmp_path)  # the same again is fine
    with pytest.raises(ConfigError, match="holds sweep 's' at scale 'cpu', not 's' at scale 'gpu'"):
        grid.check_sweep_dir(sweep.expand(SCALED, scale="gpu"), tmp_path)


def test_plan_says_when_runs_of_the_axes_are_merged(tmp_path, jscale_here):
    """Two axes that give one config twice: trained once, and the plan says so."""
    spec = tmp_path / "dup.toml"
    spec.write_text('name = "dup"\n[base.model]\nn_layer = 1\nd_model = 16\nn_heads = 2\nn_ctx = 16\n'
                    '[[axis]]\nkey = "train.lr"\nvalues = [1e-3, 1e-3, 2e-3]\n')
    assert sweep.load(spec).merged == 1 and len(sweep.load(spec).runs) == 2
    plan = jscale_here("plan", str(spec), "--no-estimate")
    assert "note: 1 run of the axes repeat another run's config exactly and is trained once (merged)" in plan.stdout
