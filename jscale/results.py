"""The results database of a sweep: one SQLite file per sweep directory (`results.sqlite`), no server.

Tables:
- runs: one row per run: its config (JSON), kind and shape, N, N_total, FLOPs per token in both conventions,
  D (the training tokens it may draw from; 0 = all), seed, learning rate, status (pending, running, done, diverged),
  best and final test loss, wall time, tokens/s, and the sweep axes' values (tags, JSON).
- curves: its learning curve, one row per evaluation (step, tokens, epochs, FLOPs both ways, the train loss as
  the mean over the steps since the last evaluation, validation and test loss with their standard errors).
- evals: every evaluation set's loss, standard error over windows, bits per byte and per-position losses (JSON)
  at each evaluation: validation, test and the extra sets (the built-in corpus's `prose`).
- windows: the per-window losses of each evaluation set at the final evaluation (float32 bytes), for
  bootstraps over windows and paired differences between runs; for the test split also each window's loss at
  each position (float16 bytes, windows x positions), for paired per-position comparisons.
- positions: the per-position test loss of databases written before `evals` (read only).
- tuning: each tuned point's grid, pilot losses, the chosen value and whether the optimum is bracketed.
- window_blocks: for each evaluation set and window count, the document each window comes from (int32), so that
  intervals resample documents rather than correlated windows (jscale.noise).
- anneals: each cooldown branch of a run (train.anneal_branches): its horizon (the steps of the shorter run it is),
  the step it left the run at, and every evaluation set's loss, standard error and per-window losses (float32).

- claims: which process is training which group now (host, pid, the process's start time, heartbeat), so that
  concurrent jobs on one directory never train the same group twice (and which worker of `jscale run --workers` is
  tuning which point: group_id "tune:POINT"); a claim whose process is gone is taken over,
  and so is one whose pid now belongs to another process (pids are reused: the start time tells them apart).

The schema is created in one transaction, and every evaluation of a group is written in one transaction, so a crash
or a full disk leaves each committed point intact and never half of one. WAL mode and a busy timeout let several
`--shard i/n` processes share one database. A damaged, locked or unwritable database is one line naming it
(`JscaleError` / `ResourceError`), never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jscale.errors import JscaleError, ResourceError, resource_error

DB_NAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, group_id TEXT, config TEXT, tags TEXT,
    kind TEXT, n_layer INTEGER, d_model INTEGER, d_ff INTEGER, d_attn INTEGER, n_heads INTEGER, n_ctx INTEGER,
    vocab_size INTEGER, N INTEGER, N_total INTEGER, flops_per_token_6N REAL, flops_per_token_exact REAL,
    D INTEGER, tokens INTEGER, steps INTEGER, batch_size INTEGER, seed INTEGER, lr REAL,
    status TEXT NOT NULL DEFAULT 'pending', step INTEGER DEFAULT 0, best_test_loss REAL, final_test_loss REAL,
    wall_time REAL DEFAULT 0, tokens_per_s REAL, updated REAL,
    role TEXT DEFAULT 'final', point TEXT, final_val_loss REAL, final_val_se REAL, final_test_se REAL,
    best_val_loss REAL, best_val_step INTEGER, epochs REAL
);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT, step INTEGER, tokens INTEGER, flops_6N REAL, flops_exact REAL, train_loss REAL, test_loss REAL,
    test_bits_per_byte REAL, val_loss REAL, val_se REAL, test_se REAL, epochs REAL, lr REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS positions (run_id TEXT, step INTEGER, losses TEXT, PRIMARY KEY (run_id, step));
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT, step INTEGER, split TEXT, loss REAL, se REAL, bits_per_byte REAL, per_position TEXT,
    PRIMARY KEY (run_id, step, split)
);
CREATE TABLE IF NOT EXISTS windows (run_id TEXT, split TEXT, step INTEGER, losses BLOB, positions BLOB,
                                    PRIMARY KEY (run_id, split));
CREATE TABLE IF NOT EXISTS claims (group_id TEXT PRIMARY KEY, host TEXT, pid INTEGER, heartbeat REAL, started TEXT);
CREATE TABLE IF NOT EXISTS window_blocks (
    split TEXT, n_ctx INTEGER, context INTEGER, n_windows INTEGER, blocks BLOB,
    PRIMARY KEY (split, n_ctx, context, n_windows)
);
CREATE TABLE IF NOT EXISTS anneals (
    run_id TEXT, horizon INTEGER, start INTEGER, tokens INTEGER, flops_exact REAL, split TEXT, loss REAL, se REAL,
    losses BLOB, PRIMARY KEY (run_id, horizon, split)
);
CREATE TABLE IF NOT EXISTS tuning (
    point TEXT PRIMARY KEY, keys TEXT, grid TEXT, losses TEXT, chosen TEXT, bracketed INTEGER, extended INTEGER,
    note TEXT, margin REAL, rounds INTEGER
);
"""
TABLES = ("runs", "curves", "positions", "evals", "windows", "claims", "tuning", "anneals", "window_blocks")
# Columns added since the first schema: a database written before them gets them (empty) when opened for writing.
ADDED_COLUMNS = {
    "runs": ("role TEXT DEFAULT 'final'", "point TEXT", "final_val_loss REAL", "final_val_se REAL",
             "final_test_se REAL", "best_val_loss REAL", "best_val_step INTEGER", "epochs REAL"),
    "curves": ("val_loss REAL", "val_se REAL", "test_se REAL", "epochs REAL", "lr REAL"),
    "tuning": ("margin REAL", "rounds INTEGER"),
    "claims": ("started TEXT",),
}
STALE_CLAIM_S = 1800  # a claim from another host with no heartbeat for this long is taken over

RUN_COLUMNS = ("run_id", "name", "group_id", "config", "tags", "kind", "n_layer", "d_model", "d_ff", "d_attn",
               "n_heads", "n_ctx", "vocab_size", "N", "N_total", "flops_per_token_6N", "flops_per_token_exact", "D",
               "tokens", "steps", "batch_size", "seed", "lr", "role", "point")


def _busy_timeout_s() -> float:
    return float(os.environ.get("JSCALE_DB_TIMEOUT", "60"))


@contextlib.contextmanager
def db_errors(path: Path):
    """SQLite's exceptions as one line naming the database and what to do."""
    try:
        yield
    except sqlite3.Error as e:
        text = " ".join(str(e).split())
        if "locked" in text or "busy" in text:
            raise ResourceError(f"{path}: the results database is locked by another process (another jscale run "
                                f"on this directory?); wait for it to finish or stop it") from None
        if "full" in text or "disk I/O" in text:
            raise ResourceError(f"{path}: cannot write ({text}); free disk space and re-run: what was committed "
                                f"is kept") from None
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            raise ResourceError(f"{path}: cannot open for writing ({text}); the directory is read-only or "
                                f"not ours") from None
        raise JscaleError(f"{path}: not a usable results database ({text}); move it aside and re-run `jscale "
                          f"run`, which rebuilds it by training again from the checkpoints") from None


class ResultsDB:
    def __init__(self, sweep_dir: str | Path, readonly: bool = False):
        self.path = Path(sweep_dir) / DB_NAME
        self.conn = None
        with db_errors(self.path):
            if readonly:
                if not self.path.is_file():
                    raise sqlite3.OperationalError("unable to open database file")
                # A directory we cannot write (a read-only mount) cannot hold SQLite's shared-memory file: read
                # the file as immutable then, since nothing can be writing it either.
                immutable = "&immutable=1" if not os.access(self.path.parent, os.W_OK) else ""
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro{immutable}", uri=True,
                                            timeout=_busy_timeout_s())
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise resource_error(e, self.path.parent, "cannot create") from None
                self.conn = sqlite3.connect(self.path, timeout=_busy_timeout_s(), isolation_level=None)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + _migration(self.conn) + "COMMIT;")
                self.conn.isolation_level = ""  # back to Python's implicit transactions
            self.conn.execute(f"PRAGMA busy_timeout={int(1000 * _busy_timeout_s())}")
            check = self.conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {check}")
            have = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [t for t in ("runs", "curves") if t not in have]
            if missing:
                raise JscaleError(f"{self.path}: not a complete results database (no table {missing[0]}); re-run "
                                  f"`jscale run` on this directory to rebuild it")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_runs(self, rows: Iterable[dict[str, Any]]) -> None:
        """Register planned runs; runs already present (by id) keep their status and results, and take the
        spec's current name and tags (labels only: the id is the config's hash)."""
        with db_errors(self.path), self.conn:
            self.conn.executemany(
                f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}, updated) "
                f"VALUES ({', '.join('?' for _ in RUN_COLUMNS)}, ?) "
                f"ON CONFLICT (run_id) DO UPDATE SET name = excluded.name, tags = excluded.tags",
                [tuple(r[c] for c in RUN_COLUMNS) + (time.time(),) for r in rows])

    def status(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)
        with db_errors(self.path):
            rows = self.conn.execute(f"SELECT run_id, status FROM runs WHERE run_id IN "
                                     f"({', '.join('?' for _ in ids)})", ids).fetchall()
        return dict(rows)

    def progress(self) -> dict[str, float]:
        """What the whole sweep has trained so far, in exact FLOPs (runs' recorded steps), and what is planned;
        `runs`/`finished` count the registered runs; `unplanned` the tuned points whose final runs wait for a
        choice (pilots registered, no tuning row)."""
        with db_errors(self.path):
            done, total, runs, finished = self.conn.execute(
                "SELECT COALESCE(SUM(step * batch_size * n_ctx * flops_per_token_exact), 0), "
                "COALESCE(SUM(tokens * flops_per_token_exact), 0), COUNT(*), "
                "COALESCE(SUM(status IN ('done', 'diverged')), 0) FROM runs").fetchone()
            unplanned = self.conn.execute(
                "SELECT COUNT(DISTINCT point) FROM runs WHERE role = 'pilot' AND point IS NOT NULL AND point NOT IN "
                "(SELECT point FROM tuning)").fetchone()[0]
        return {"flops_done": float(done), "flops_total": float(total), "runs": int(runs), "finished": int(finished),
                "unplanned": int(unplanned)}

    def last_step(self, run_ids: list[str]) -> int:
        """The newest step evaluated and recorded for every one of these runs (0 if any has none)."""
        marks = ", ".join("?" for _ in run_ids)
        with db_errors(self.path):
            rows = dict(self.conn.execute(f"SELECT run_id, MAX(step) FROM curves WHERE run_id IN ({marks}) "
                                          f"GROUP BY run_id", run_ids).fetchall())
        return min(rows.get(r) or 0 for r in run_ids)

    def claim(self, group_id: str) -> bool:
        """Take the group for this process unless a live process holds it (atomic across processes)."""
        me = (socket.gethostname(), os.getpid())
        with db_errors(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = self.conn.execute("SELECT host, pid, heartbeat, started FROM claims WHERE group_id = ?",
                                        (group_id,)).fetchone()
                if row is not None and ((row[0], row[1]) != me or row[3] != process_started(os.getpid())) \
                        and _alive(*row):
                    self.conn.execute("ROLLBACK")
                    return False
                self.conn.execute("INSERT OR REPLACE INTO claims (group_id, host, pid, heartbeat, started) "
                                  "VALUES (?, ?, ?, ?, ?)", (group_id, *me, time.time(), process_started(os.getpid())))
                self.conn.execute("COMMIT")
                return True
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def release(self, group_id: str) -> None:
        with db_errors(self.path), self.conn:
            self.conn.execute("DELETE FROM claims WHERE group_id = ? AND host = ? AND pid = ?",
                              (group_id, socket.gethostname(), os.getpid()))

    def truncate(self, run_ids: list[str], after_step: int) -> None:
        """Forget evaluations past a checkpoint: they are redone from it."""
        marks = ", ".join("?" for _ in run_ids)
        with db_errors(self.path), self.conn:
            for table in ("curves", "positions", "evals", "windows"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks}) AND step > ?", [*run_ids, after_step])
            self.conn.execute(f"DELETE FROM anneals WHERE run_id IN ({marks}) AND start > ?", [*run_ids, after_step])
            self.conn.execute(f"UPDATE runs SET status = 'running', step = ? WHERE run_id IN ({marks}) "
                              f"AND status != 'diverged'", [after_step, *run_ids])

    def record_eval(self, records: list[dict[str, Any]]) -> None:
        """One evaluation of a group: curve points, each evaluation set's loss, standard error and per-position
        losses, the per-window losses of a final evaluation, and run summaries, in one transaction."""
        with db_errors(self.path), self.conn:
            for r in records:
                self.conn.execute(
                    "INSERT OR REPLACE INTO curves (run_id, step, tokens, flops_6N, flops_exact, train_loss, "
                    "test_loss, test_bits_per_byte, val_loss, val_se, test_se, epochs, lr) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["run_id"], r["step"], r["tokens"], r["flops_6N"], r["flops_exact"], r["train_loss"],
                     r["test_loss"], r["test_bits_per_byte"], r["val_loss"], r["val_se"], r["test_se"],
                     r["epochs"], r["lr"]))
                for split, e in r["evals"].items():
                    self.conn.execute("INSERT OR REPLACE INTO evals VALUES (?, ?, ?, ?, ?, ?, ?)",
                                      (r["run_id"], r["step"], split, e["loss"], e["se"], e["bits_per_byte"],
                                       json.dumps(e["per_position"])))
                grid = r.get("window_positions")
                for split, losses in (r.get("per_window") or {}).items():
                    positions = None if grid is None or split != "test" else np.asarray(grid, "<f2")
                    self.conn.execute("INSERT OR REPLACE INTO windows VALUES (?, ?, ?, ?, ?)",
                                      (r["run_id"], split, r["step"], np.asarray(losses, "<f4").tobytes(),
                                       None if positions is None else positions.tobytes()))
                best = self.conn.execute("SELECT MIN(test_loss) FROM curves WHERE run_id = ?",
                                         (r["run_id"],)).fetchone()[0]
                best_val, best_step = self.conn.execute(
                    "SELECT val_loss, step FROM curves WHERE run_id = ? ORDER BY val_loss, step LIMIT 1",
                    (r["run_id"],)).fetchone()
                self.conn.execute(
                    "UPDATE runs SET status = ?, step = ?, final_test_loss = ?, best_test_loss = ?, "
                    "final_val_loss = ?, final_val_se = ?, final_test_se = ?, best_val_loss = ?, best_val_step = ?, "
                    "epochs = ?, wall_time = wall_time + ?, tokens_per_s = ?, updated = ? WHERE run_id = ?",
                    (r["status"], r["step"], r["test_loss"], best, r["val_loss"], r["val_se"], r["test_se"],
                     best_val, best_step, r["epochs"], r["wall_time"], r["tokens_per_s"], time.time(), r["run_id"]))
                self.conn.execute("UPDATE claims SET heartbeat = ? WHERE group_id = (SELECT group_id FROM runs "
                                  "WHERE run_id = ?)", (time.time(), r["run_id"]))

    def record_blocks(self, blocks: dict[str, np.ndarray], n_ctx: int, context: int) -> None:
        with db_errors(self.path), self.conn:
            for split, b in blocks.items():
                self.conn.execute("INSERT OR REPLACE INTO window_blocks VALUES (?, ?, ?, ?, ?)",
                                  (split, n_ctx, context, len(b), np.asarray(b, "<i4").tobytes()))

    def record_anneal(self, records: list[dict[str, Any]]) -> None:
        """One cooldown branch of a group: every member's losses at its horizon, in one transaction."""
        with db_errors(self.path), self.conn:
            for r in records:
                for split, e in r["evals"].items():
                    self.conn.execute("INSERT OR REPLACE INTO anneals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                      (r["run_id"], r["horizon"], r["start"], r["tokens"], r["flops_exact"], split,
                                       e["loss"], e["se"], np.asarray(r["per_window"][split], "<f4").tobytes()))

    def pilot_results(self, run_ids: list[str]) -> dict[str, tuple[str, float | None]]:
        """Status and final validation loss of these runs (what a tuning choice reads; never test loss)."""
        marks = ", ".join("?" for _ in run_ids)
        with db_errors(self.path):
            rows = self.conn.execute(f"SELECT run_id, status, final_val_loss FROM runs WHERE run_id IN ({marks})",
                                     run_ids).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def pilot_windows(self, point: str, split: str = "validation") -> list[tuple[float, np.ndarray]]:
        """The finished pilots of a tuned point: (final validation loss, per-window losses of `split`), best first;
        what sizes the point's final evaluations (data.eval_se)."""
        with db_errors(self.path):
            rows = self.conn.execute(
                "SELECT r.final_val_loss, w.losses FROM runs r JOIN windows w ON w.run_id = r.run_id "
                "WHERE r.point = ? AND r.role = 'pilot' AND r.status = 'done' AND w.split = ? "
                "AND r.final_val_loss IS NOT NULL ORDER BY r.final_val_loss, r.run_id", (point, split)).fetchall()
        return [(float(loss), np.frombuffer(blob, "<f4")) for loss, blob in rows]

    def blocks(self, split: str, n_ctx: int, context: int, n_windows: int) -> np.ndarray | None:
        """Each window's document for these evaluation windows (record_blocks), or None."""
        with db_errors(self.path):
            row = self.conn.execute("SELECT blocks FROM window_blocks WHERE split = ? AND n_ctx = ? AND context = ? "
                                    "AND n_windows = ?", (split, n_ctx, context, n_windows)).fetchone()
        return None if row is None else np.frombuffer(row[0], "<i4")

    def record_tuning(self, point: str, keys: list[str], grid: dict, losses: list, chosen: dict, bracketed: bool,
                      extended: bool, note: str, margin: float = float("nan"), rounds: int = 0) -> None:
        with db_errors(self.path), self.conn:
            self.conn.execute("INSERT OR REPLACE INTO tuning (point, keys, grid, losses, chosen, bracketed, extended, "
                              "note, margin, rounds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (point, json.dumps(keys), json.dumps(grid),
                               json.dumps([(v, loss if np.isfinite(loss) else None) for v, loss in losses]),
                               json.dumps(chosen), int(bracketed), int(extended), note,
                               margin if np.isfinite(margin) else None, rounds))

    def complete_until(self, run_ids: list[str], eval_steps: list[int]) -> int:
        """The last step up to which every one of these runs has all its rows: a curve point and evaluation sets at
        every evaluation, and the final evaluation's per-window losses (validation and test). 0 when the first is
        missing."""
        marks = ", ".join("?" for _ in run_ids)
        with db_errors(self.path):
            curves = {(r, s) for r, s in self.conn.execute(
                f"SELECT run_id, step FROM curves WHERE run_id IN ({marks})", run_ids)}
            evals = {(r, s) for r, s in self.conn.execute(
                f"SELECT run_id, step FROM evals WHERE run_id IN ({marks}) GROUP BY run_id, step "
                f"HAVING COUNT(*) >= 2", run_ids)}
            windows = {(r, s) for r, s in self.conn.execute(
                f"SELECT run_id, step FROM windows WHERE run_id IN ({marks}) AND split IN ('validation', 'test') "
                f"GROUP BY run_id HAVING COUNT(*) = 2", run_ids)}
        kept = 0
        for step in eval_steps:
            have = all((r, step) in curves and (r, step) in evals for r in run_ids)
            if step == eval_steps[-1]:
                have = have and all((r, step) in windows for r in run_ids)
            if not have:
                break
            kept = step
        return kept

    def finish(self, run_ids: list[str]) -> None:
        """Runs whose final evaluation and final checkpoint are both written: running becomes done (diverged stays)."""
        marks = ", ".join("?" for _ in run_ids)
        with db_errors(self.path), self.conn:
            self.conn.execute(f"UPDATE runs SET status = 'done', updated = ? WHERE status = 'running' AND run_id IN "
                              f"({marks}) AND step = steps", [time.time(), *run_ids])

    def mark(self, run_ids: list[str], status: str) -> None:
        with db_errors(self.path), self.conn:
            self.conn.executemany("UPDATE runs SET status = ?, updated = ? WHERE run_id = ?",
                                  [(status, time.time(), r) for r in run_ids])


def test_at_best_validation(runs, curves):
    """Early stopping that reads validation only: each run's test loss at its best validation step (its final
    test loss where no validation was recorded), as a Series aligned with runs."""
    import pandas as pd

    test_at = curves.set_index(["run_id", "step"])["test_loss"]
    best = [float(test_at.get((r, int(s)), np.nan)) if s is not None and np.isfinite(s) else np.nan
            for r, s in zip(runs["run_id"], runs["best_val_step"])]
    return pd.Series(best, index=runs.index).fillna(runs["final_test_loss"])


def _migration(conn: sqlite3.Connection) -> str:
    """ALTER statements that bring a database written by an older jscale up to SCHEMA (all tables or none)."""
    statements = []
    for table, columns in ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            continue  # a new database: CREATE TABLE makes it whole
        statements += [f"ALTER TABLE {table} ADD COLUMN {c};" for c in columns if c.split()[0] not in have]
    return "".join(statements)


def process_started(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22): with the pid, it names one process
    for good (a pid is reused by others). None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # fields after the command name, which may hold spaces


def _alive(host: str, pid: int, heartbeat: float, started: str | None = None) -> bool:
    """Whether a claim's holder is still running: on another host, a recent heartbeat; here, its pid alive and
    started when the claim says (a pid reused by another process is not the holder)."""
    if host != socket.gethostname():
        return time.time() - heartbeat < STALE_CLAIM_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    now = process_started(pid)
    return started is None or now is None or now == started


def load(sweep_dir: str | Path) -> dict[str, Any]:
    """The results of a sweep as pandas DataFrames: {"runs", "curves", "positions", "evals", "windows", "tuning",
    "anneals"}, and "blocks": {(split, n_ctx, context, n_windows): each window's document (int32 array)}.

    curves has one row per evaluation with the run's N, N_total and status joined in; evals one row per
    (run, step, evaluation set) with loss, standard error over windows and bits per byte; positions one row per
    (run, step, position) of the test split; windows one row per (run, evaluation set) with the final evaluation's
    per-window losses (a float32 array in column "losses").
    """
    import pandas as pd

    path = Path(sweep_dir) / DB_NAME
    if not path.exists():
        if (Path(sweep_dir) / "sweep.json").exists():
            raise JscaleError(f"{path}: missing; re-run `jscale run` on {sweep_dir} to rebuild it (finished runs "
                              f"are trained again from their checkpoints' start, bitwise the same)")
        raise JscaleError(f"{sweep_dir}: no {DB_NAME} here (not a jscale sweep directory)")
    with ResultsDB(sweep_dir, readonly=True) as db, db_errors(path):
        have = {r[0] for r in db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        try:
            runs = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", db.conn)
            curves = pd.read_sql_query(
                "SELECT c.*, r.N, r.N_total, r.name, r.status, r.D AS D_limit, r.batch_size FROM curves c "
                "JOIN runs r USING (run_id) ORDER BY c.run_id, c.step", db.conn)
            evals = (pd.read_sql_query("SELECT * FROM evals ORDER BY run_id, step, split", db.conn)
                     if "evals" in have else pd.DataFrame(columns=["run_id", "step", "split", "loss", "se",
                                                                   "bits_per_byte", "per_position"]))
            if len(evals):
                raw = evals[evals.split == "test"][["run_id", "step", "per_position"]].rename(
                    columns={"per_position": "losses"})
            else:  # written before evaluation sets were recorded
                raw = pd.read_sql_query("SELECT * FROM positions ORDER BY run_id, step", db.conn)
            windows = (pd.read_sql_query("SELECT * FROM windows ORDER BY run_id, split", db.conn)
                       if "windows" in have else pd.DataFrame(columns=["run_id", "split", "step", "losses"]))
            claims = (pd.read_sql_query("SELECT * FROM claims", db.conn) if "claims" in have
                      else pd.DataFrame(columns=["group_id", "host", "pid", "heartbeat"]))
            blocks = ({(r[0], r[1], r[2], r[3]): np.frombuffer(r[4], "<i4") for r in db.conn.execute(
                "SELECT split, n_ctx, context, n_windows, blocks FROM window_blocks")}
                      if "window_blocks" in have else {})
            anneals = (pd.read_sql_query("SELECT * FROM anneals ORDER BY run_id, horizon, split", db.conn)
                       if "anneals" in have else pd.DataFrame(columns=["run_id", "horizon", "start", "tokens",
                                                                       "flops_exact", "split", "loss", "se", "losses"]))
            tuning = (pd.read_sql_query("SELECT * FROM tuning ORDER BY point", db.conn) if "tuning" in have
                      else pd.DataFrame(columns=["point", "keys", "grid", "losses", "chosen", "bracketed",
                                                 "extended", "note"]))
        except pd.errors.DatabaseError as e:  # pandas wraps SQLite's errors
            raise sqlite3.DatabaseError(str(e)) from None
    if "role" not in runs:
        runs["role"] = "final"
    windows["losses"] = [np.frombuffer(b, "<f4") for b in windows["losses"]]
    anneals["losses"] = [np.frombuffer(b, "<f4") for b in anneals["losses"]]
    if "positions" in windows:  # test split: (W, T) per-window per-position losses
        windows["positions"] = [None if b is None else np.frombuffer(b, "<f2").astype(np.float32).reshape(len(w), -1)
                                for b, w in zip(windows["positions"], windows["losses"])]
    rows = [(r.run_id, r.step, t + 1, loss) for r in raw.itertuples() for t, loss in enumerate(json.loads(r.losses))]
    positions = pd.DataFrame(rows, columns=["run_id", "step", "position", "loss"])
    # A group claimed by a live process is being trained even before its first evaluation is recorded.
    live = {c.group_id for c in claims.itertuples()
            if _alive(c.host, int(c.pid), float(c.heartbeat), getattr(c, "started", None))}
    runs.loc[runs["group_id"].isin(live) & (runs["status"] == "pending"), "status"] = "running"
    curves = _comparable_curves(curves, runs, windows)
    return {"runs": runs, "curves": curves, "positions": positions, "evals": evals, "windows": windows,
            "tuning": tuning, "anneals": _with_final_horizon(anneals, runs, evals, windows), "blocks": blocks}


def curve_subset(n_windows: int, n_curve: int) -> np.ndarray:
    """Which of a set's n_windows final-evaluation windows the evaluations before the last one score
    (data.curve_eval_windows = n_curve; 0 = all): evenly spaced, the same for every run of a corpus and context."""
    n = min(n_curve, n_windows) if n_curve else n_windows
    return np.unique(np.linspace(0, n_windows - 1, n).round().astype(np.int64))


def _comparable_curves(curves, runs, windows):
    """curves with val_curve / val_curve_se: validation loss on the same windows at every evaluation. The
    evaluations before the last score an evenly spaced subset of the final evaluation's windows, so the final
    value on all windows is not comparable with them (a different sample of text); its value on that subset is
    recomputed from the stored per-window losses. Regimes, early stopping and learning-curve analyses read these;
    a run's best validation step is recomputed from them."""
    curves = curves.copy()
    curves["val_curve"], curves["val_curve_se"] = curves["val_loss"], curves["val_se"]
    if not len(curves) or not len(windows):
        return curves
    val = windows[windows["split"] == "validation"].set_index("run_id")
    n_curve = {r.run_id: json.loads(r.config)["data"].get("curve_eval_windows", 0) for r in runs.itertuples()}
    last = curves.groupby("run_id")["step"].transform("max") == curves["step"]
    for i in curves.index[last]:
        run_id, step = curves.at[i, "run_id"], curves.at[i, "step"]
        if run_id not in val.index or int(val.at[run_id, "step"]) != int(step):
            continue
        losses = np.asarray(val.at[run_id, "losses"], float)
        pick = losses[curve_subset(len(losses), n_curve.get(run_id, 0))]
        curves.at[i, "val_curve"] = float(pick.mean())
        curves.at[i, "val_curve_se"] = float(pick.std(ddof=1) / np.sqrt(len(pick))) if len(pick) > 1 else np.nan
    best = curves.sort_values(["run_id", "val_curve", "step"]).groupby("run_id").head(1).set_index("run_id")
    runs["best_val_step"] = runs["run_id"].map(best["step"]).astype(float)
    runs["best_val_loss"] = runs["run_id"].map(best["val_curve"])
    return curves


def _with_final_horizon(anneals, runs, evals, windows):
    """The cooldown branches of each run with branches, and its own final evaluation as its longest horizon (the
    run is the annealed run of all its steps): one row per (run, horizon, evaluation set)."""
    import pandas as pd

    if not len(anneals):
        return anneals
    rows = []
    finals = windows.set_index(["run_id", "split"])
    scores = evals.set_index(["run_id", "step", "split"])
    for r in runs[runs["run_id"].isin(set(anneals["run_id"])) & (runs["status"] == "done")].itertuples():
        steps = int(json.loads(r.config)["train"]["steps"])
        tokens = steps * int(r.batch_size) * int(r.n_ctx)
        for split in sorted(set(anneals.loc[anneals["run_id"] == r.run_id, "split"])):
            if (r.run_id, split) not in finals.index or (r.run_id, steps, split) not in scores.index:
                continue
            w = finals.loc[(r.run_id, split)]
            rows.append({"run_id": r.run_id, "horizon": steps, "start": steps, "tokens": tokens,
                         "flops_exact": tokens * float(r.flops_per_token_exact), "split": split,
                         "loss": float(scores.loc[(r.run_id, steps, split), "loss"]),
                         "se": float(scores.loc[(r.run_id, steps, split), "se"]), "losses": w["losses"]})
    out = pd.concat([anneals, pd.DataFrame(rows, columns=anneals.columns)], ignore_index=True) if rows else anneals
    return out.sort_values(["run_id", "horizon", "split"]).reset_index(drop=True)
