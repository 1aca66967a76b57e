"""Training-step throughput: tokens/s, achieved FLOP/s and MFU for a table of GPT sizes.

MFU = exact training FLOPs per token (6N + attention + de-embedding, no remat; jscale.accounting) x tokens/s
      / the device's dense 16-bit peak (jscale.train.PEAK_FLOPS). Not reported where the peak is unknown (CPUs).

    python benchmarks/throughput.py --preset cpu          # small sizes, float32
    python benchmarks/throughput.py --preset gpu          # the sizes of shared/reference/scaling.md section 7
    python benchmarks/throughput.py --attention xla cudnn # compare attention implementations
    python benchmarks/throughput.py --kinds               # every model kind at roughly equal N
"""

from __future__ import annotations

import argparse
import datetime

import jax
import jax.numpy as jnp

from jscale import accounting, train
from jscale.config import ModelConfig, TrainConfig
from jscale.models import build

# (d_model, n_layer, n_ctx, batch)
PRESETS = {
    "cpu": [(64, 2, 128, 16), (128, 4, 256, 16), (256, 4, 256, 8)],
    "gpu": [(128, 4, 512, 64), (512, 8, 512, 128), (768, 12, 1024, 32), (1024, 24, 1024, 16)],
}


# Every kind at roughly equal non-embedding N (0.79M at the cpu size: 4 layers x d_model 128 of a Transformer).
KINDS = {
    "transformer": dict(kind="transformer", n_layer=4, d_model=128),
    "transformer, multi-query": dict(kind="transformer", n_layer=4, d_model=128, n_kv_heads=1),
    "universal, 2 blocks x 2": dict(kind="universal", n_layer=2, d_model=128, reuse=2),  # N/2, same compute
    "universal, 1 block x 4": dict(kind="universal", n_layer=1, d_model=176, reuse=4),
    "transformer-xl, mem 256": dict(kind="transformer_xl", n_layer=4, d_model=128, mem_len=256),
    "lstm, 2 layers": dict(kind="lstm", n_layer=2, d_model=224),
    "lstm, 1 layer": dict(kind="lstm", n_layer=1, d_model=320),
}
if jax.default_backend() == "gpu":  # cuDNN's fused LSTM against the scan, same parameters
    KINDS["lstm, 2 layers, cuDNN"] = dict(kind="lstm", n_layer=2, d_model=224, lstm_impl="cudnn")


def measure(d_model, n_layer, n_ctx, batch, attention="auto", dtype="auto", steps=10, **model):
    cfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_heads=max(1, d_model // 64), n_ctx=n_ctx, vocab_size=256,
                      attention=attention, dtype=dtype, **model)
    model, opt = build(cfg), train.make_optimizer(TrainConfig())
    state = jax.jit(train.init_state, static_argnums=(0, 1, 2, 4))(model, opt, n_ctx, jnp.uint32(0), batch)
    step = jax.jit(train.multi_step(train.make_train_step(model)), donate_argnums=0)
    hp = train.hparams_from_config(TrainConfig())
    batch_arr = jax.random.randint(jax.random.key(0), (batch, n_ctx + 1), 0, 256)
    dt = train.seconds_per_step(step, state, batch_arr, hp, steps)
    acc = accounting.account(cfg)
    tokens_per_s = batch * n_ctx / dt
    flops = tokens_per_s * acc.train_flops_exact
    peak = train.device_peak_flops()
    return {"N": acc.N, "N_compute": acc.N_compute, "tokens_per_s": tokens_per_s, "tflops": flops / 1e12,
            "mfu": None if peak is None else flops / peak}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="gpu" if jax.default_backend() == "gpu" else "cpu")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "xla", "cudnn"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--kinds", action="store_true", help="every model kind at roughly equal N (n_ctx 256, batch 16)")
    args = p.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{datetime.date.today().isoformat()}, dtype {args.dtype}")
    if args.kinds:
        print("| kind | n_layer | d_model | N | N_compute | tokens/s | TFLOP/s | MFU |")
        print("|---|---|---|---|---|---|---|---|")
        for name, kw in KINDS.items():
            kw = dict(kw)
            r = measure(kw.pop("d_model"), kw.pop("n_layer"), 256, 16, dtype=args.dtype, steps=args.steps, **kw)
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(f"| {name} | {KINDS[name]['n_layer']} | {KINDS[name]['d_model']} | {r['N'] / 1e6:.2f}M | "
                  f"{r['N_compute'] / 1e6:.2f}M | {r['tokens_per_s']:,.0f} | {r['tflops']:.3f} | {mfu} |", flush=True)
        return
    print("| d_model | n_layer | n_ctx | batch | N | attention | tokens/s | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d_model, n_layer, n_ctx, batch in PRESETS[args.preset]:
        for attention in args.attention:
            try:
                r = measure(d_model, n_layer, n_ctx, batch, attention, args.dtype, args.steps)
            except Exception as e:  # e.g. cuDNN refusing a shape: record it and go on
                print(f"| {d_model} | {n_layer} | {n_ctx} | {batch} | | {attention} | failed: "
                      f"{type(e).__name__}: {str(e).splitlines()[0][:80]} | | |")
                continue
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(f"| {d_model} | {n_layer} | {n_ctx} | {batch} | {r['N'] / 1e6:.2f}M | {attention} | "
                  f"{r['tokens_per_s']:,.0f} | {r['tflops']:.3f} | {mfu} |", flush=True)


if __name__ == "__main__":
    main()
