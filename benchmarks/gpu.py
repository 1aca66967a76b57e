"""Every accelerator measurement jscale needs, in one call: run this once on a machine with a GPU.

    python benchmarks/gpu.py                      # on the GPU: about 8 minutes, rows appended to benchmarks/RESULTS.md
    python benchmarks/gpu.py --smoke --results X  # tiny sizes on any backend (the test suite runs this on the CPU)

Sections, each timed and skipped (with the reason written down) once --budget-s is spent:
1. GPT throughput at 85M (d_model 768, 12 layers, n_ctx 1024, batch 32), XLA and cuDNN attention: tokens/s, MFU.
2. Ensembles of tiny members (d_model 128, 2 layers, n_ctx 256, batch 16): 16 and 64 members, vmapped and mapped,
   against one after another.
3. A 4-member learning-rate pilot at each size of experiments/size.toml's gpu scale: ensemble speedup.
4. LSTM, 2 layers, hidden 512: lax.scan against cuDNN (model.lstm_impl), tokens/s and MFU.
5. Batch-1 decoding latency (benchmarks/latency.py's gpu preset).
6. A 100-step throughput probe of the largest group of every experiment at its gpu scale, and the device time the
   whole experiment would take at that throughput.
Targets (issue 13): 85M >= 45% MFU; 16 tiny members >= 10x sequential and >= 12% MFU; cuDNN LSTM >= 10% MFU.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import traceback
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from jscale import accounting, generate, grid, sharding, sweep, train  # noqa: E402
from jscale.config import Config, ModelConfig, TrainConfig  # noqa: E402


def _mfu(tokens_per_s: float, cfg: ModelConfig) -> str:
    peak = train.device_peak_flops()
    return "n/a" if peak is None else f"{100 * tokens_per_s * accounting.account(cfg).train_flops_exact / peak:.1f}%"


def gpt_throughput(smoke: bool) -> list[str]:
    import throughput

    d, L, T, B = (32, 2, 64, 4) if smoke else (768, 12, 1024, 32)
    rows = ["| model | attention | tokens/s | MFU |", "|---|---|---|---|"]
    for attention in ("xla", "cudnn"):
        if attention == "cudnn" and jax.default_backend() != "gpu":
            rows.append(f"| d_model {d}, {L} layers, n_ctx {T}, batch {B} | cudnn | skipped: no GPU | |")
            continue
        r = throughput.measure(d, L, T, B, attention=attention, steps=3 if smoke else 10)
        cfg = ModelConfig(n_layer=L, d_model=d, n_heads=max(1, d // 64), n_ctx=T)
        rows.append(f"| {r['N'] / 1e6:.1f}M (d_model {d}, {L} layers, n_ctx {T}, batch {B}) | {attention} | "
                    f"{r['tokens_per_s']:,.0f} | {_mfu(r['tokens_per_s'], cfg)} |")
    return rows


def ensembles(smoke: bool) -> list[str]:
    # (smoke: the pilots section's tiny shape and member count, so that it reuses this section's compiled steps)
    d, T, B, L = (16, 16, 4, 1) if smoke else (128, 256, 16, 2)
    cfg = Config(model=ModelConfig(n_layer=L, d_model=d, n_heads=max(1, d // 32), n_ctx=T),
                 train=TrainConfig(batch_size=B))
    rows = ["| members | sequential tokens/s | vmap speedup | map speedup | aggregate MFU (best) |",
            "|---|---|---|---|---|"]
    for members in ((4,) if smoke else (16, 64)):
        r = grid.measure_vmap_speedup(cfg, members, 2 if smoke else 10)
        seq = B * T / r["single_step_s"]
        rows.append(f"| {members} | {seq:,.0f} | {r['vmap_speedup']:.2f}x | {r['map_speedup']:.2f}x | "
                    f"{_mfu(members * seq * r['speedup'], cfg.model)} |")
    return rows


def pilots(smoke: bool) -> list[str]:
    sw = sweep.load(REPO / "experiments" / "size.toml", scale="cpu" if smoke else "gpu")
    rows = ["| size (experiments/size.toml) | N | members | vmap speedup | map speedup |", "|---|---|---|---|---|"]
    seen = set()
    for run in sorted(sw.runs, key=lambda r: accounting.account(r.cfg.model).N):
        m = run.cfg.model
        if (m.n_layer, m.d_model) in seen or (smoke and seen):
            continue
        seen.add((m.n_layer, m.d_model))
        cfg = run.cfg
        if smoke:
            cfg = Config(model=ModelConfig(n_layer=1, d_model=16, n_heads=1, n_ctx=16), train=TrainConfig(batch_size=4))
        r = grid.measure_vmap_speedup(cfg, 4, 2 if smoke else 5)
        rows.append(f"| n_layer {m.n_layer}, d_model {m.d_model} | {accounting.account(m).N:,} | 4 | "
                    f"{r['vmap_speedup']:.2f}x | {r['map_speedup']:.2f}x |")
    return rows


def lstm(smoke: bool) -> list[str]:
    import throughput

    d, T, B = (16, 16, 4) if smoke else (512, 256, 64)
    rows = ["| LSTM | impl | tokens/s | MFU |", "|---|---|---|---|"]
    for impl in ("scan", "cudnn"):
        if impl == "cudnn" and jax.default_backend() != "gpu":
            rows.append(f"| 2 layers, hidden {d} | cudnn | skipped: no GPU | |")
            continue
        r = throughput.measure(d, 2, T, B, steps=3 if smoke else 10, kind="lstm", lstm_impl=impl)
        cfg = ModelConfig(kind="lstm", n_layer=2, d_model=d, n_ctx=T)
        rows.append(f"| 2 layers, hidden {d} | {impl} | {r['tokens_per_s']:,.0f} | {_mfu(r['tokens_per_s'], cfg)} |")
    return rows


def latency(smoke: bool) -> list[str]:
    import latency as lat

    base = dict(n_ctx=16, d_model=16, n_layer=2, n_heads=2) if smoke else lat.PRESETS["gpu"]
    rows = ["| model | ms/token (batch 1) | decode state |", "|---|---|---|"]
    for label, variant in list(lat.VARIANTS.items())[:2 if smoke else None]:
        r = generate.latency_per_token(lat.model_config(base, variant), repeats=1 if smoke else 5)
        rows.append(f"| {label} | {1e3 * r['seconds_per_token']:.3f} | {r['cache_bytes'] / 1024:,.1f} KiB |")
    return rows


def experiment_probes(smoke: bool) -> list[str]:
    rows = ["| experiment (gpu scale) | largest group | members | tokens/s (all members) | est. device time |",
            "|---|---|---|---|---|"]
    for path in sorted((REPO / "experiments").glob("*.toml")):
        if path.stem == "train_small":  # a single-run config, not a sweep
            continue
        # the probe times steps, not data: every byte corpus gives the same shapes, and the gpu scales' pypi corpus
        # need not be on the machine
        any_bytes = ["data.corpus=builtin:stdlib", "data.bin_dtype=uint16"]
        sw = sweep.load(path, any_bytes, scale=None if path.stem == "quickstart" else "cpu" if smoke else "gpu")
        groups = sw.groups(grid.MAX_MEMBERS)
        big = max(groups, key=lambda g: len(g.runs) * accounting.account(g.cfg.model).train_flops_exact)
        cfgs = [r.cfg for r in big.runs]
        if smoke:  # the same code path at a size a CPU test can afford
            small = Config(model=ModelConfig(kind=cfgs[0].model.kind, n_layer=1, d_model=16,
                                             n_heads=1 if cfgs[0].model.kind != "lstm" else ModelConfig.n_heads,
                                             n_ctx=16, mem_len=16 if cfgs[0].model.kind == "transformer_xl" else 0),
                           train=TrainConfig(batch_size=4))
            cfgs = [small] * min(2, len(cfgs))
        steps_n = 3 if smoke else 100
        compiled = train.compile_steps(cfgs, len(cfgs) > 1, mode=grid.default_mode())
        host_hp = [{k: np.asarray(v) for k, v in train.hparams_from_config(c.train).items()} for c in cfgs]
        seeds = np.arange(len(cfgs), dtype=np.uint32) if len(cfgs) > 1 else np.uint32(0)
        stacked = train.stack_members(host_hp) if len(cfgs) > 1 else host_hp[0]
        hp = {k: sharding.put(v, compiled.hp_sharding) for k, v in stacked.items()}
        state = compiled.init(seeds)
        t, n_ctx = cfgs[0].train, cfgs[0].model.n_ctx
        shape = ((len(cfgs),) if len(cfgs) > 1 else ()) + (t.batch_size, n_ctx + 1)
        seconds = train.seconds_per_step(compiled.train_steps, state, np.zeros(shape, np.int32), hp, steps_n,
                                         warmup=1, batches_sharding=compiled.batches_sh)
        tokens_per_s = len(cfgs) * t.batch_size * n_ctx / seconds
        total_tokens = sum(r.cfg.train.steps * r.cfg.train.batch_size * r.cfg.model.n_ctx for r in sw.runs)
        est = total_tokens / tokens_per_s  # as if every group ran at the largest group's token rate
        rows.append(f"| {path.stem} | n_layer {big.cfg.model.n_layer}, d_model {big.cfg.model.d_model} "
                    f"({big.cfg.model.kind}) | {len(big.runs)} | {tokens_per_s:,.0f} | {est / 60:.1f} min |")
    return rows


SECTIONS = [("GPT throughput at 85M", gpt_throughput), ("Ensembles of tiny members", ensembles),
            ("4-member LR pilots at the size experiment's gpu sizes", pilots), ("LSTM: scan against cuDNN", lstm),
            ("Batch-1 decoding latency", latency), ("100-step probes of the gpu-scale experiments",
                                                    experiment_probes)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script end to end on any backend")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="Markdown file to append to")
    ap.add_argument("--budget-s", type=float, default=450, help="skip the sections left once this much time is spent")
    args = ap.parse_args()
    start = time.perf_counter()
    dev = jax.devices()[0]
    lines = [f"\n## benchmarks/gpu.py{' --smoke' if args.smoke else ''}: {dev.device_kind} ({jax.default_backend()}), "
             f"{datetime.date.today().isoformat()}, jax {jax.__version__}\n"]
    for title, section in SECTIONS:
        lines.append(f"\n### {title}\n")
        spent = time.perf_counter() - start
        if spent > args.budget_s:
            lines.append(f"skipped: the {args.budget_s:.0f} s budget was spent ({spent:.0f} s)\n")
            continue
        t0 = time.perf_counter()
        try:
            lines.extend(row + "\n" for row in section(args.smoke))
        except Exception as e:  # one failing section must not lose the others' numbers
            lines.append(f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}\n")
            traceback.print_exc()
        lines.append(f"\n({time.perf_counter() - t0:.0f} s)\n")
        print("".join(lines[-3:]), flush=True)
    with open(args.results, "a") as f:
        f.write("".join(lines))
    print(f"appended to {args.results} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
