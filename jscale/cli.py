"""The `jscale` command line: train, info, plan, run, status, report, fit, sample, eval, export, import.

User errors (a bad config key, a missing file, an impossible value) print one line, `jscale: error: ...`, and exit
with status 2; nothing is compiled or written before the input has been checked.
"""

from __future__ import annotations

import argparse
import errno
import os
import sqlite3
import sys
import time
from pathlib import Path

from jscale import cpuload, interrupts, progress
from jscale.errors import ConfigError, JscaleError, ResourceError, resource_error


def _train(args) -> None:
    from jscale import config, resolve, train

    cfg = resolve.load(args.config, args.overrides)
    sized = config.pilot_sized(cfg.data)
    if sized:
        raise ConfigError(f"data.{sized[0]}: sizes the final runs' evaluations of a tuned sweep from its pilots "
                          f"(jscale run); one run sizes them with data.eval_tokens / data.curve_eval_windows")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    interrupts.check()  # a Ctrl-C while JAX was importing: stop before any work
    record = train.train(cfg, out, progress=not args.quiet)
    print(f"done: {out} | step {record['step']} | test loss {record['test_loss']:.4f} nats/token "
          f"({record['test_bits_per_byte']:.4f} bits/byte)")


def _human(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _config(args) -> None:
    """Every config key with its type, default (or FILE's value) and description."""
    from jscale import config, resolve

    values = resolve.load(args.config, args.overrides).to_dict() if args.config else None
    rows = []
    for key, kind, default, text in config.describe_keys():
        section, name = key.split(".")
        rows.append((key, kind, default if values is None else repr(values[section][name]), text))
    widths = [max(len(str(row[i])) for row in rows) for i in range(3)]  # every column as wide as its widest cell
    for key, kind, value, text in rows:
        print(f"{key:<{widths[0]}}  {kind:<{widths[1]}}  {str(value):<{widths[2]}}  {text}")


def _info(args) -> None:
    from jscale import accounting, resolve

    cfg = resolve.load(args.config, args.overrides)
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
        ("evaluation", _eval_text(cfg, tokens * acc.train_flops_exact)),
        ("memory: params + AdamW", f"{_human(mem['params_and_optimizer'])}B"),
        ("memory: activations (est.)", f"{_human(mem['activations'])}B at batch {t.batch_size}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _eval_text(cfg, train_flops: float) -> str:
    from jscale import accounting

    e = accounting.eval_cost(cfg)
    return (f"{e['sets']} sets x {e['windows_final']:,} windows at the end, {e['windows_curve']:,} at each of "
            f"{e['evaluations'] - 1} before: {e['tokens']:,} tokens, {e['flops']:.3e} FLOPs "
            f"({100 * e['flops'] / train_flops:.0f}% of training)")


def _check_run_flags(args) -> None:
    """Flags that a run or a plan would otherwise take silently, refused in one line before anything is written."""
    if getattr(args, "ensemble_size", None) is not None and args.ensemble_size < 1:
        raise ConfigError(f"--ensemble-size: must be >= 1, got {args.ensemble_size}")
    n, i = getattr(args, "num_processes", None), getattr(args, "process_id", None)
    if n is not None and n < 1:
        raise ConfigError(f"--num-processes: must be >= 1, got {n}")
    if i is not None and (i < 0 or (n is not None and i >= n)):
        raise ConfigError(f"--process-id: must be in [0, --num-processes), got {i}")
    if (n is not None or i is not None) and not getattr(args, "coordinator", None) and not os.environ.get(
            "JAX_COORDINATOR_ADDRESS"):
        flag = "--process-id" if i is not None else "--num-processes"
        raise ConfigError(f"{flag}: a multi-process run needs --coordinator HOST:PORT (process 0's address)")


def _plan(args) -> None:
    from jscale import grid, sweep, workers

    if args.cpus:  # first: JAX must not start before the process is on its cores
        workers.pin(args.cpus)
    _check_run_flags(args)
    workers.check(args.workers, None, False)
    sw = sweep.load(args.sweep, args.overrides, args.scale)
    # `jscale run --workers` trains one run per group unless asked
    members = args.ensemble_size or (1 if args.workers > 1 else grid.MAX_MEMBERS)
    groups = sw.groups(members)
    print(sweep.plan_table(sw, groups))
    if args.ensemble_size is None and args.workers == 1:  # (--workers: one run a group, as those workers train)
        print(f"(groups shown at up to {members} members; `jscale run` measures whether this backend trains them "
              f"faster as ensembles or one by one, and how many fit in memory)")
    rate = None
    if not args.no_estimate or sw.budget_minutes:
        from jscale import throughput

        say = lambda line: print(line, flush=True)
        measured = throughput.for_device(sw.device, log=say)
        if sw.device not in throughput.REFERENCE:  # this device: time the sweep's own shapes too
            measured = throughput.with_shapes(measured, groups, log=say)
        print(throughput.describe(groups, measured, sw.budget_minutes))
        rate = throughput.tokens_per_s(groups, measured)
        if args.workers > 1:
            if sw.device in throughput.REFERENCE:
                raise ConfigError(f"--workers: shares this machine's CPU cores; no estimate for {sw.device}")
            selects = [args.sweep, *args.overrides, *(["--scale", args.scale] if args.scale else []),
                       "--ensemble-size", str(members)]  # what each timing process plans: these groups
            print(throughput.describe_workers(selects, groups, args.workers, log=say))
    from jscale import planning

    for line in planning.describe(sw, groups, rate):
        print(line)


def _run(args) -> None:
    from jscale import grid, sweep, workers

    if args.cpus:  # first: JAX must not start before the process is on its cores
        workers.pin(args.cpus)
    _check_run_flags(args)
    shard = grid.parse_shard(args.shard)
    workers.check(args.workers, args.shard, args.num_processes is not None or args.coordinator is not None)
    sw = sweep.load(args.sweep, args.overrides, args.scale)  # validated before any device work
    if sw.budget_minutes and not args.worker:
        from jscale import throughput

        throughput.check_budget(sw, sw.groups(args.ensemble_size or grid.MAX_MEMBERS), args.force)
    interrupts.check()
    out = Path(args.out) if args.out else Path("runs") / (Path(args.sweep).stem + (f"-{sw.scale}" if sw.scale else ""))
    if args.workers > 1:
        _run_workers(args, sw, out)
        return
    grid.init_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    if args.worker and jax.default_backend() != "cpu":
        raise ConfigError(f"--workers: shares one machine's CPU cores; on {jax.default_backend()} run one "
                          f"process (several would share one accelerator's memory)")
    timings: dict[str, float] = {}
    t0, started, others = time.perf_counter(), time.time(), cpuload.Others()
    summary = grid.run_sweep(sw, out, ensemble_size=args.ensemble_size, shard=shard,
                             progress=not args.quiet, wait_for_others=args.worker, timings=timings)
    if args.timings_out:
        workers.write_timings(Path(args.timings_out), started, timings)
    if jax.process_index() == 0 and not args.worker:
        print(f"done: {out} | {summary['runs']} runs in {summary['groups']} groups, {summary['trained_groups']} "
              f"trained now | jscale status {out}")
        if summary["trained_groups"] and not args.quiet:
            load = cpuload.note(others.share(), "these times are longer than on an idle machine")
            print(progress.describe_timings(timings, time.perf_counter() - t0) + (f"; {load}" if load else ""))
        if summary.get("left"):
            print(f"left: {summary['left']}")


def _run_workers(args, sw, out: Path) -> None:
    """`jscale run --workers N`: the sweep is validated here, trained by N worker processes (jscale.workers)."""
    from jscale import grid, results, workers

    t0, started, others = time.perf_counter(), time.time(), cpuload.Others()
    grid.check_sweep_dir(sw, out, log=False)  # a wrong directory is refused once, before any worker starts
    results.ResultsDB(out).close()  # created (or checked) here: workers creating it at once would race for it
    grid.prepare_data(sw)  # corpora and evaluation windows into the caches once, not by every worker at once
    prepared = time.time()
    child = [args.sweep, *args.overrides, "--out", str(out)]
    if args.scale:
        child += ["--scale", args.scale]
    if args.force:
        child += ["--force"]
    # One run per group unless asked: groups are what the workers share, and a directory that already chose its
    # ensemble size keeps it (ensemble.json), so a resumed sweep groups its runs as before.
    if args.ensemble_size is not None:
        child += ["--ensemble-size", str(args.ensemble_size)]
    elif not (out / "ensemble.json").is_file():
        child += ["--ensemble-size", "1"]
    lines: list[dict] = []
    status = workers.run(child, out, args.workers, progress=not args.quiet, timings=lines)
    if status != 0:
        raise SystemExit(status)
    done, left = workers.summary(out)
    print(done)
    if not args.quiet:
        load = cpuload.note(others.share(), "these times are longer than on an idle machine")
        print(workers.describe_timings(lines, args.workers, started, prepared, time.time(),
                                       time.perf_counter() - t0) + (f"; {load}" if load else ""))
    if left:
        print(f"left: {left}")


def _report(args) -> None:
    from jscale import report

    paths = report.write_report(args.dir, args.out, latency=not args.no_latency, n_bootstrap=args.bootstrap,
                                baselines=not args.no_baselines)
    print(f"wrote {paths['html']} and {paths['markdown']}")


def _sample(args) -> None:
    from jscale import trained

    model = trained.load(args.run, args.run_id, args.step)
    print(args.prompt + trained.sample(model, args.prompt, args.tokens, args.temperature, args.top_k, args.seed))


def _eval(args) -> None:
    import json

    from jscale import trained

    model = trained.load(args.run, args.run_id, args.step)
    result = trained.evaluate(model, args.data, args.split, args.windows)
    where = (f"every token of {result['corpus']}" if result["split"] == "all"
             else f"the {result['split']} split of {result['corpus']}")
    print(f"{result['run']} at step {result['step']} on {where} "
          f"({result['windows']} windows): loss {result['loss']:.4f} ± {result['se']:.4f} nats/token, "
          f"{result['bits_per_byte']:.4f} bits/byte")
    print("loss by position: " + ", ".join(f"{lo}{'' if lo == hi else f'-{hi}'}: {loss:.3f}"
                                           for lo, hi, loss in trained.position_bins(result["per_position"])))
    if args.out:
        from jscale.files import write_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.out), json.dumps(result, indent=2))
        print(f"wrote {args.out}")


def _export(args) -> None:
    from jscale import hf_gpt2, trained

    if args.to != "hf":
        raise JscaleError(f"--to: {args.to!r} is not a target (hf: a GPT2LMHeadModel directory)")
    model = trained.load(args.run, args.run_id, args.step)
    hf_gpt2.hf_config(model.cfg.model)  # refuse what GPT-2 cannot express before reading anything else
    out = hf_gpt2.export(model, args.dir)
    print(f"wrote {out} (GPT2LMHeadModel.from_pretrained loads it)")


def _import(args) -> None:
    from jscale import hf_gpt2

    if args.kind != "hf":
        raise JscaleError(f"import: {args.kind!r} is not a source kind (hf: a GPT-2 directory)")
    model = hf_gpt2.model_section(args.dir)
    lines = ["# A run that starts from a GPT-2 checkpoint; train it with jscale train THIS_FILE.",
             "# Its tokenizer must give the checkpoint's vocabulary (set [data] tokenizer: gpt2, or file:PATH).",
             "[model]"]
    lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, str) else v}"
              .replace("'", '"') for k, v in model.items()]
    tokenizer = Path(args.dir).expanduser().resolve() / "tokenizer.json"
    if tokenizer.is_file():  # the checkpoint's own tokenizer, beside it
        lines += ["[data]", f'tokenizer = "file:{tokenizer}"']
    text = "\n".join(lines) + "\n"
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise JscaleError(f"--out: {out} exists; choose a new file")
        from jscale.files import write_atomic

        write_atomic(out, text)
        print(f"wrote {out}")
    else:
        print(text, end="")


def _corpus(args) -> None:
    from jscale.data import packages

    names = packages.read_package_list(args.packages, args.packages_file)
    packages.prepare_packages(names, Path(args.out), Path(args.archives) if args.archives else None)


def _status(args) -> None:
    from jscale import grid

    print(grid.status_table(args.dir))


SCALE_HELP = "which [scale.NAME] of the sweep file to run: cpu, gpu, full (default cpu, if it has scales)"


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one `jscale: error:` line (exit 2) instead of usage text."""

    def error(self, message: str):
        raise JscaleError(message)


# Environment faults that are the machine's, not a bug: reported as one line naming the path, exit status 1.
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO, errno.EFBIG,
                   errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY}


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `section.key=value` overrides stand after the options too (`--out X model.d_model=64`)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [x for x in extra if "=" in x and not x.startswith("-")]
    unknown = [x for x in extra if x not in overrides]
    if unknown:
        raise JscaleError(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        if not hasattr(args, "overrides"):
            raise JscaleError(f"jscale {args.command} takes no overrides: {' '.join(overrides)}")
        args.overrides = list(args.overrides) + overrides
    return args


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache, on by default for the command line: a re-run, a resumed sweep or a
    repeated shape loads its compiled steps instead of compiling them again. JSCALE_XLA_CACHE=off turns it off;
    JAX_COMPILATION_CACHE_DIR (or JSCALE_CACHE/xla, default ~/.cache/jscale/xla) says where it lives."""
    if os.environ.get("JSCALE_XLA_CACHE", "on").lower() in ("0", "off", "false", "no"):
        return None
    root = os.environ.get("JSCALE_CACHE", "~/.cache/jscale")
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(os.path.join(root, "xla"))
    settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    if "jax" not in sys.modules:  # read by JAX when it is imported, which most commands do later
        for key, value in settings.items():
            os.environ.setdefault(key.upper(), str(value))
    else:
        import jax

        for key, value in settings.items():
            jax.config.update(key, value)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The command line: every subcommand and argument, each with its help text."""
    parser = _Parser(prog="jscale", description=__doc__.splitlines()[0])
    from jscale import __version__

    parser.add_argument("--version", action="version", version=f"jscale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model; re-running on the same --out resumes it")
    p.add_argument("config", help="TOML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=256")
    p.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-eval lines")
    p.set_defaults(func=_train)

    p = sub.add_parser("config", help="every config key with its type, default (or FILE's value) and meaning")
    p.add_argument("config", nargs="?", help="TOML config file whose values to show (default: the defaults)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=256")
    p.set_defaults(func=_config)

    p = sub.add_parser("info", help="parameter and FLOP counts and memory estimate of a config")
    p.add_argument("config", help="TOML config file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=256")
    p.set_defaults(func=_info)

    p = sub.add_parser("plan", help="print a sweep's runs, their N, FLOPs, tokens and groups; trains nothing")
    p.add_argument("sweep", help="sweep TOML file")
    p.add_argument("overrides", nargs="*", help="base config overrides, e.g. train.steps=100")
    p.add_argument("--ensemble-size", type=int, help="at most this many runs per vmapped group")
    p.add_argument("--scale", help=SCALE_HELP)
    p.add_argument("--no-estimate", action="store_true", help="skip the wall-time estimate (the first one on a "
                                                                 "device measures its throughput, seconds on a CPU)")
    p.add_argument("--workers", type=int, default=1, help="also estimate `jscale run --workers N` (a worker's "
                   "steps timed on its share of the cores, in separate processes)")
    p.add_argument("--cpus", help="measure on these CPU cores only, e.g. 0 (what --workers uses)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("run", help="run a sweep; re-running on the same --out skips finished runs and resumes")
    p.add_argument("sweep", help="sweep TOML file")
    p.add_argument("overrides", nargs="*", help="base config overrides, e.g. train.steps=100")
    p.add_argument("--out", help="sweep directory (default runs/SWEEP_NAME)")
    p.add_argument("--ensemble-size", type=int, help="runs per vmapped group (1 = one after another); default: "
                                                       "measured per backend, limited by memory")
    p.add_argument("--scale", help=SCALE_HELP)
    p.add_argument("--shard", help="i/n: train only this job's share of the groups (jobs share one --out)")
    p.add_argument("--force", action="store_true", help="run a scale whose estimated time exceeds its budget")
    p.add_argument("--coordinator", help="multi-host: coordinator address host:port (jax.distributed)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    p.add_argument("--workers", type=int, default=1,
                   help="N processes train the sweep's groups side by side on this machine (a CPU's cores; one "
                        "run per group unless --ensemble-size), each on its share of the cores; results are bitwise "
                        "those of one process on as many cores (--cpus)")
    p.add_argument("--cpus", help="run on these CPU cores only, e.g. 0 or 0,1 (results depend on how many: XLA "
                                  "splits its sums over its threads); --workers gives each worker an equal share")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process started by --workers
    p.add_argument("--timings-out", help=argparse.SUPPRESS)  # a worker's time line, as JSON, for its parent
    p.set_defaults(func=_run)

    p = sub.add_parser("status", help="done / running / pending / diverged runs of a sweep and compute spent/left")
    p.add_argument("dir", help="a sweep directory (jscale run --out)")
    p.set_defaults(func=_status)

    p = sub.add_parser("report", help="an HTML page and a Markdown summary of one sweep or a directory of sweeps: "
                                      "figures, fits with intervals beside the published numbers, verdicts")
    p.add_argument("dir", help="a sweep directory, or a directory of sweep directories")
    p.add_argument("--out", help="output directory (default DIR/report)")
    p.add_argument("--no-latency", action="store_true", help="skip measuring generation latency (efficiency)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for each interval")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the n-gram baselines (counted once per corpus and windows, then cached)")
    p.set_defaults(func=_report)

    p = sub.add_parser("corpus", help="build a larger offline corpus (bin:DIR) from the Python source of pinned "
                                      "packages, with a manifest of every file")
    p.add_argument("--packages", nargs="*", default=[], help="pinned packages, name==version")
    p.add_argument("--packages-file", help="a file of pinned packages, one per line")
    p.add_argument("--archives", help="a folder of already downloaded archives (.whl, .tar.gz, .zip): no network")
    p.add_argument("--out", required=True, help="the corpus directory (train.bin, val.bin, test.bin, manifest.json)")
    p.set_defaults(func=_corpus)

    from jscale import fit_cli

    fit_cli.add_parser(sub)

    def run_arguments(p):
        p.add_argument("run", help="a run directory (jscale train), or a sweep directory with --run")
        p.add_argument("--run", dest="run_id", help="in a sweep directory: the run's id or name")
        p.add_argument("--step", type=int, help="the checkpoint's step (default the newest)")

    p = sub.add_parser("sample", help="text a trained model writes after a prompt (cached decoding)")
    run_arguments(p)
    p.add_argument("--prompt", default="", help="the text to continue (default: the start of a document)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the text is a pure function of it)")
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="a trained model's loss, bits per byte and per-position loss on a corpus")
    run_arguments(p)
    p.add_argument("--data", help="a data.corpus value, read with the run's tokenizer (default the run's corpus)")
    p.add_argument("--split", help="validation, test, an extra evaluation set, train, or all (every token of the "
                                   "corpus); default: all with --data (your file scored whole), else test")
    p.add_argument("--windows", type=int, default=0, help="windows to score (default as the run's final "
                                                          "evaluation; with --split all, every window)")
    p.add_argument("--out", help="also write the result as JSON here")
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="write a trained model in another library's format")
    run_arguments(p)
    p.add_argument("--to", required=True, help="hf: a directory GPT2LMHeadModel.from_pretrained loads")
    p.add_argument("dir", help="the new directory")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="a config whose run starts from another library's weights")
    p.add_argument("kind", help="hf: a GPT-2 directory (config.json, model.safetensors)")
    p.add_argument("dir", help="the directory to import from")
    p.add_argument("--out", help="write the config here (default: print it)")
    p.set_defaults(func=_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    interrupts.install()  # first: a Ctrl-C from here on stops cleanly at a step boundary
    enable_compilation_cache()
    try:
        return _main(argv)
    except KeyboardInterrupt:  # a signal that arrived before the handlers were installed
        print("jscale: interrupted (SIGINT); re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        interrupts.uninstall()


def _main(argv: list[str] | None) -> int:
    import logging

    # orbax's writer runs on asyncio; a write that failed (a full disk) is reported by jscale in one line, and
    # asyncio's "Future exception was never retrieved" tracebacks at exit would only repeat it.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    parser = build_parser()

    try:
        args = _parse(parser, argv)
        args.func(args)
        sys.stdout.flush()
    except interrupts.Interrupted as e:
        print(f"jscale: interrupted ({signal_name(e.signum)}) at a step boundary, everything written is whole; "
              f"re-run the same command to resume", file=sys.stderr)
        return e.exit_status
    except JscaleError as e:
        real_stderr = getattr(sys.modules.get("jscale.train.checkpoints"), "REAL_STDERR_FD", None)
        if real_stderr is not None:  # a checkpoint write failed: orbax's threads are still failing; leave now
            sys.stdout.flush()
            os.write(real_stderr, f"jscale: error: {_one_line(e)}\n".encode())
            os._exit(e.exit_status)
        print(f"jscale: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_status
    except BrokenPipeError:  # `jscale plan ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if e.errno not in RESOURCE_ERRNOS:
            raise
        print(f"jscale: error: {_one_line(resource_error(e))}", file=sys.stderr)
        return ResourceError.exit_status
    except sqlite3.Error as e:  # not caught by results.py: still one line, never a traceback
        print(f"jscale: error: results database: {_one_line(e)}", file=sys.stderr)
        return ResourceError.exit_status
    return 0


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def entry() -> None:
    """The `jscale` console script: main(), and after a stop by a signal or a fault of the machine (exit status 1: a
    full disk, a read-only directory), leave without the interpreter's teardown. Everything jscale wrote is whole
    and closed by then, but orbax's and TensorStore's threads may still be winding down, and at teardown they print
    tracebacks ("cannot schedule new futures after shutdown"); after a full disk, tensorboardX's exit hook retries
    the flush that failed and its writer threads die on their closed queues, each with a traceback."""
    status = main()
    if status >= 128 or status == ResourceError.exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
