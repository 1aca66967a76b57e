"""The converged experiments at their gpu scale, within a device budget: run this on a machine with a GPU.

    python benchmarks/gpu_experiments.py --budget-s 540 --export $OUT        # compute, then size; then the report
    python benchmarks/gpu_experiments.py --experiments X.toml --scale cpu --runs R --report-out O --budget-s 60

Each experiment runs as `jscale run experiments/NAME.toml --scale gpu --out runs/gpu/NAME` in a child process, one
after another, while the budget lasts. The child that is running when the budget is spent gets SIGTERM: it stops at
the next step boundary with everything written (jscale's sweeps resume bitwise), so the next call on a GPU goes on
where this one stopped; an experiment is not started with less than --min-start-s left. Then
`jscale report runs/gpu --out experiments/results/gpu` reports whatever has finished (a report of unfinished sweeps
says which runs are missing), and one row per experiment (finished or not, wall time, device, date) is appended to
benchmarks/RESULTS.md. --export DIR copies the report and slim databases (experiments/slim_results.py) to DIR, the
folder a lent device hands back. Order: compute (IsoFLOP minima, ~5 estimated minutes: done in one call), then size
(converged L(N), ~1.9 estimated H100-hours: it resumes over many calls); others can be named with --experiments.

The gpu scales train on the pypi corpus (`data.corpus = "bin:corpora/pypi"`, 205.6 MB of token files), which a
machine without the package registry cannot build and which is larger than a lent device carries. Carry it
compressed instead (29.9 MB with xz -6): on a machine that has it,
    tar -cf - -C corpora pypi | xz -T2 -6 > corpora/pypi.tar.xz        # then run(..., carry=["corpora/pypi.tar.xz"])
and this script unpacks it into corpora/pypi (checking every split against the committed manifest) before the
first sweep starts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = ("experiments/compute.toml", "experiments/size.toml")
GRACE_S = 120  # after SIGTERM: the child finishes its step and checkpoint; then SIGKILL (every write is atomic)


def jscale(*args: str) -> list[str]:
    return [sys.executable, "-m", "jscale.cli", *args]


def run_one(sweep_file: Path, scale: str, out: Path, deadline: float) -> tuple[str, float]:
    """Run one sweep until it finishes or the deadline; returns (how it ended, seconds)."""
    t0 = time.monotonic()
    cmd = jscale("run", str(sweep_file), "--out", str(out), "--quiet", "--force",
                 *(["--scale", scale] if scale else []))
    child = subprocess.Popen(cmd, cwd=REPO)
    try:
        child.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return "stopped at the budget (resumable: run again)", time.monotonic() - t0
    ended = "finished" if child.returncode == 0 else f"failed (exit {child.returncode})"
    return ended, time.monotonic() - t0


def unpack_corpus(archive: Path, corpus: Path, manifest: Path) -> str:
    """corpora/pypi from its carried archive when it is not there yet; returns what was done. Every split must match
    the committed manifest's checksum, so a damaged or different archive stops here, not after an hour of training."""
    if corpus.is_dir():
        return f"{corpus} already there"
    if not archive.is_file():
        return f"no {corpus} and no {archive}: the gpu scales will refuse in one line"
    import hashlib
    import json

    with tarfile.open(archive) as tar:
        tar.extractall(corpus.parent, filter="data")
    for split in json.loads(manifest.read_text())["splits"].values():
        digest = hashlib.sha256((corpus / split["file"]).read_bytes()).hexdigest()
        if digest != split["sha256"]:
            shutil.rmtree(corpus)
            raise SystemExit(f"gpu_experiments: {archive}: {split['file']} does not match {manifest} (removed)")
    return f"unpacked {archive} into {corpus} (checksums as in {manifest.name})"


def device_name() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.device_kind} ({jax.default_backend()}), jax {jax.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="*", default=list(DEFAULT), help="sweep files, run in this order")
    ap.add_argument("--scale", default="gpu", help="the sweeps' scale (empty: a sweep file without scales)")
    ap.add_argument("--runs", default="runs/gpu", help="folder of sweep directories (one per experiment)")
    ap.add_argument("--report-out", default="experiments/results/gpu", help="where jscale report writes")
    ap.add_argument("--budget-s", type=float, default=540, help="device seconds for all the runs together")
    ap.add_argument("--min-start-s", type=float, default=30, help="start no experiment with less than this left")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="Markdown file to append to")
    ap.add_argument("--export", help="copy the report and slim databases here (e.g. a lent device's $OUT)")
    ap.add_argument("--bootstrap", default="1000", help="the report's bootstrap resamples")
    ap.add_argument("--corpus-archive", default="corpora/pypi.tar.xz",
                    help="the pypi corpus carried compressed: unpacked into corpora/pypi when that is missing")
    args = ap.parse_args(argv)
    archive = Path(args.corpus_archive) if os.path.isabs(args.corpus_archive) else REPO / args.corpus_archive
    print("gpu_experiments: " + unpack_corpus(archive, REPO / "corpora" / "pypi",
                                              REPO / "experiments" / "pypi-corpus.manifest.json"), flush=True)
    start = time.monotonic()
    deadline = start + args.budget_s
    runs = (REPO / args.runs).resolve() if not os.path.isabs(args.runs) else Path(args.runs)
    rows = []
    for name in args.experiments:
        sweep_file = (REPO / name) if not os.path.isabs(name) else Path(name)
        if not sweep_file.is_file():
            print(f"gpu_experiments: {name}: no such sweep file", file=sys.stderr)
            return 2
        left = deadline - time.monotonic()
        if left < args.min_start_s:
            rows.append((sweep_file.stem, f"not started: {left:.0f} s of the budget left", 0.0))
            continue
        ended, seconds = run_one(sweep_file, args.scale, runs / sweep_file.stem, deadline)
        rows.append((sweep_file.stem, ended, seconds))
        print(f"gpu_experiments: {sweep_file.stem}: {ended} after {seconds:.0f} s", flush=True)
    t0 = time.monotonic()
    report_out = (REPO / args.report_out) if not os.path.isabs(args.report_out) else Path(args.report_out)
    done = list(runs.glob("*/results.sqlite")) if runs.is_dir() else []  # a sweep that wrote anything
    report = subprocess.run(jscale("report", str(runs), "--out", str(report_out), "--bootstrap", args.bootstrap),
                            cwd=REPO) if done else None
    report_s = time.monotonic() - t0
    lines = [f"\n## benchmarks/gpu_experiments.py --scale {args.scale or '(none)'}: {device_name()}, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, budget {args.budget_s:.0f} s\n\n",
             "| experiment | how it ended | wall clock |\n", "|---|---|---|\n"]
    lines += [f"| {name} | {ended} | {seconds:.0f} s |\n" for name, ended, seconds in rows]
    outcome = ("not written (nothing ran)" if report is None else "written" if report.returncode == 0
               else f"failed (exit {report.returncode})")
    lines.append(f"| report | {outcome} | {report_s:.0f} s |\n")
    with open(args.results, "a") as f:
        f.write("".join(lines))
    print("".join(lines))
    if args.export:
        export = Path(args.export)
        export.mkdir(parents=True, exist_ok=True)
        if report is not None and report.returncode == 0:
            shutil.copytree(report_out, export / "report", dirs_exist_ok=True)
        subprocess.run([sys.executable, str(REPO / "experiments" / "slim_results.py"), str(runs),
                        str(export / "sweeps")], cwd=REPO, check=False)
        shutil.copy2(args.results, export / "RESULTS.md")
    failed = any(ended.startswith("failed") for _, ended, _ in rows) or (report is not None and report.returncode)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
