"""Copy finished sweep directories into a results folder small enough to commit, from which the report redoes itself.

    python experiments/slim_results.py runs/long experiments/results/long/sweeps [--keep-positions lstm]

For each sweep directory under SRC (those with a sweep.json), writes DEST/NAME/ with sweep.json, ensemble.json and
a copy of results.sqlite (SQLite's backup API, so a sweep still writing is copied consistently) in which:
- per-window per-position losses (`windows.positions`, the bulk of a database) are dropped, except in the sweeps
  named by --keep-positions, whose per-position analysis reads them;
- run claims (which process trains what) are dropped;
- the file is vacuumed and left in rollback-journal mode, so no -wal/-shm files go beside it.
Checkpoints, TensorBoard logs and metrics.jsonl are not copied. `jscale report DEST --out DIR` gives the same numbers
as the report of SRC.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
from pathlib import Path

DB_NAME = "results.sqlite"


def slim_copy(src: Path, dest: Path, keep_positions: bool) -> int:
    """One sweep directory; returns the bytes of the written database."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("sweep.json", "ensemble.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    target = dest / DB_NAME
    tmp = target.with_name(f".{DB_NAME}.partial")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(f"file:{src / DB_NAME}?mode=ro", uri=True) as source, sqlite3.connect(tmp) as copy:
        source.backup(copy)
    conn = sqlite3.connect(tmp)
    try:
        if keep_positions:  # the per-position analysis reads final runs only; pilots' rows are dead weight
            conn.execute("UPDATE windows SET positions = NULL WHERE run_id IN "
                         "(SELECT run_id FROM runs WHERE role IS NOT 'final')")
        else:
            conn.execute("UPDATE windows SET positions = NULL")
        conn.execute("DELETE FROM claims")
        conn.commit()
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()
    for stale in (target.with_name(DB_NAME + "-wal"), target.with_name(DB_NAME + "-shm")):
        stale.unlink(missing_ok=True)
    tmp.replace(target)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a folder of sweep directories (or one sweep directory)")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--keep-positions", nargs="*", default=[], help="sweep names whose per-position losses to keep")
    args = ap.parse_args(argv)
    sweeps = [args.src] if (args.src / "sweep.json").is_file() else sorted(
        p for p in args.src.iterdir() if (p / "sweep.json").is_file() and (p / DB_NAME).is_file())
    if not sweeps:
        print(f"slim_results: {args.src}: no sweep directory (sweep.json and {DB_NAME}) here", file=sys.stderr)
        return 2
    for src in sweeps:
        size = slim_copy(src, args.dest / src.name, src.name in args.keep_positions)
        print(f"{src} -> {args.dest / src.name} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
