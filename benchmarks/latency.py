"""Generation latency at batch 1: seconds per token of greedy decoding over the whole context, one jitted scan
(jscale.generate), for every model kind and for multi-head, grouped-query and multi-query attention.

    python benchmarks/latency.py --preset cpu     # small models, float32
    python benchmarks/latency.py --preset gpu     # d_model 768 and 1024, n_ctx 1024 (bf16 on the GPU)
"""

from __future__ import annotations

import argparse
import datetime

import jax

from jscale import accounting, generate
from jscale.config import ModelConfig

# (label, model keys) per preset; each preset shares n_ctx, d_model and depth where the kind allows.
PRESETS = {
    "cpu": dict(n_ctx=128, d_model=128, n_layer=4, n_heads=8),
    "gpu": dict(n_ctx=1024, d_model=1024, n_layer=12, n_heads=16),
}
VARIANTS = {
    "transformer, multi-head": {},
    "transformer, grouped-query (KV heads / 4)": {"n_kv_heads": "quarter"},
    "transformer, multi-query": {"n_kv_heads": 1},
    "universal, blocks / 2, reused 2x": {"kind": "universal", "n_layer": "half", "reuse": 2},
    "transformer-xl, memory = n_ctx": {"kind": "transformer_xl", "mem_len": "n_ctx"},
    "lstm, 2 layers": {"kind": "lstm", "n_layer": 2},
}


def model_config(base: dict, variant: dict) -> ModelConfig:
    keys = dict(base)
    for k, v in variant.items():
        keys[k] = {"quarter": max(1, base["n_heads"] // 4), "half": max(1, base["n_layer"] // 2),
                   "n_ctx": base["n_ctx"]}.get(v, v) if isinstance(v, str) and k != "kind" else v
    return ModelConfig(**keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="gpu" if jax.default_backend() == "gpu" else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    base = PRESETS[args.preset]
    dev = jax.devices()[0]
    print(f"{datetime.date.today()} | {dev.device_kind} ({jax.default_backend()}) | jax {jax.__version__} | "
          f"batch 1, {base['n_ctx']} tokens per timed generation, median of {args.repeats}")
    print("| model | N (non-embedding) | decode state | ms/token | tokens/s |")
    print("|---|---|---|---|---|")
    for label, variant in VARIANTS.items():
        cfg = model_config(base, variant)
        lat = generate.latency_per_token(cfg, repeats=args.repeats)
        ms = 1e3 * lat["seconds_per_token"]
        print(f"| {label} | {accounting.account(cfg).N / 1e6:.2f}M | {lat['cache_bytes'] / 1024:,.1f} KiB | "
              f"{ms:.3f} | {1e3 / ms:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
