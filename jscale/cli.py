"""The `jscale` command line: train, info, fit.

User errors (a bad config key, a missing file, an impossible value) print one line, `jscale: error: ...`, and exit
with status 2; nothing is compiled or written before the input has been checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jscale.config import JscaleError


def _train(args) -> None:
    from jscale import config, train

    cfg = config.load(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    record = train.train(cfg, out, progress=not args.quiet)
    print(f"done: {out} | step {record['step']} | test loss {record['test_loss']:.4f} nats/token "
          f"({record['test_bits_per_byte']:.4f} bits/byte)")


def _human(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _info(args) -> None:
    from jscale import accounting, config

    cfg = config.load(args.config, args.overrides)
    m, t = cfg.model, cfg.train
    acc = accounting.account(m)
    bytes_per_act = 4 if m.dtype == "float32" else 2 if m.dtype == "bfloat16" else 4
    mem = accounting.memory_estimate(m, t.batch_size, bytes_per_act)
    tokens = t.steps * t.batch_size * m.n_ctx
    rows = [
        ("model", f"{m.kind}: n_layer {m.n_layer}, d_model {m.d_model}, d_ff {m.d_ff_}, d_attn {m.d_attn_}, "
                  f"n_heads {m.n_heads}, n_ctx {m.n_ctx}, vocab {m.vocab_size}"),
        ("N (non-embedding)", f"{acc.N:,}"),
        ("N_total (all parameters)", f"{acc.N_total:,}"),
        *((f"  params {k}", f"{v:,}") for k, v in acc.params.items()),
        ("C_forward per token", f"{acc.C_forward:,.0f}  (2N + 2 n_layer n_ctx d_attn)"),
        ("train FLOPs per token, 6N", f"{acc.train_flops_6N:,.0f}"),
        ("train FLOPs per token, exact", f"{acc.train_flops_exact:,.0f}  (3 x forward, attention and "
                                         f"de-embedding included)"),
        ("tokens per run", f"{tokens:,}  ({t.steps} steps x {t.batch_size} x {m.n_ctx})"),
        ("compute per run", f"{tokens * acc.train_flops_6N:.3e} FLOPs (6ND), {tokens * acc.train_flops_exact:.3e} "
                            f"(exact) = {tokens * acc.train_flops_6N / accounting.PF_DAY:.3e} PF-days"),
        ("memory: params + AdamW", f"{_human(mem['params_and_optimizer'])}B"),
        ("memory: activations (est.)", f"{_human(mem['activations'])}B at batch {t.batch_size}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model; re-running on the same --out resumes it")
    p.add_argument("config", help="TOML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=256")
    p.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-eval lines")
    p.set_defaults(func=_train)

    p = sub.add_parser("info", help="parameter and FLOP counts and memory estimate of a config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_info)

    from jscale import fit_cli

    fit_cli.add_parser(sub)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except JscaleError as e:
        print(f"jscale: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jscale: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
