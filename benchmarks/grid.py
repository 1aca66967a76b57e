"""Vmapped ensembles against the same members trained one after another: aggregate tokens/s, speedup and MFU.

    python benchmarks/grid.py                                  # the issue's shape: d_model 128, 2 layers, n_ctx 256,
                                                               # batch 16, members 1, 16, 64
    python benchmarks/grid.py --d-model 64 --n-ctx 128 --members 4 16   # a CPU-sized variant

All paths run the same jitted train_step (jscale.train.make_train_step): member by member from Python, vmapped
over stacked members, or mapped over them inside one program (lax.map; jscale.train.ensemble).
MFU = members x tokens/s x exact training FLOPs per token / the device's dense 16-bit peak.
"""

from __future__ import annotations

import argparse
import datetime

import jax

from jscale import accounting, grid, train
from jscale.config import Config, ModelConfig, TrainConfig


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--members", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    cfg = Config(model=ModelConfig(n_layer=args.n_layer, d_model=args.d_model, n_heads=max(1, args.d_model // 64),
                                   n_ctx=args.n_ctx, vocab_size=256),
                 train=TrainConfig(batch_size=args.batch))
    acc = accounting.account(cfg.model)
    peak = train.device_peak_flops()
    tokens = args.batch * args.n_ctx
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{datetime.date.today().isoformat()}; members of d_model {args.d_model}, {args.n_layer} layers, "
          f"n_ctx {args.n_ctx}, batch {args.batch} (N = {acc.N / 1e6:.2f}M)")
    print("| members | sequential tokens/s | vmapped tokens/s | vmap speedup | mapped tokens/s | map speedup | "
          "aggregate MFU (best) |")
    print("|---|---|---|---|---|---|---|")
    for m in args.members:
        r = grid.measure_vmap_speedup(cfg, m, args.steps)
        seq = tokens / r["single_step_s"]
        vm, mp = m * tokens / r["vmap_step_s"], m * tokens / r["map_step_s"]
        mfu = "n/a" if peak is None else f"{100 * max(vm, mp) * acc.train_flops_exact / peak:.1f}%"
        print(f"| {m} | {seq:,.0f} | {vm:,.0f} | {r['vmap_speedup']:.2f}x | {mp:,.0f} | {r['map_speedup']:.2f}x | "
              f"{mfu} |", flush=True)


if __name__ == "__main__":
    main()
