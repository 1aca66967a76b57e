"""The results database of a sweep: one SQLite file per sweep directory (`results.sqlite`), no server.

Tables:
- runs: one row per run: its config (JSON), kind and shape, N, N_total, FLOPs per token in both conventions,
  D (the training tokens it may draw from; 0 = all), seed, learning rate, status (pending, running, done, diverged),
  best and final test loss, wall time, tokens/s, and the sweep axes' values (tags, JSON).
- curves: its learning curve, one row per evaluation (step, tokens, FLOPs both ways, train and test loss).
- positions: the per-position test loss at each evaluation (a JSON array over the context).

Every evaluation of a group is written in one transaction, so a crash leaves each committed point intact and never
half of one. WAL mode and a busy timeout let several `--shard i/n` processes share one database.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

DB_NAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, group_id TEXT, config TEXT, tags TEXT,
    kind TEXT, n_layer INTEGER, d_model INTEGER, d_ff INTEGER, d_attn INTEGER, n_heads INTEGER, n_ctx INTEGER,
    vocab_size INTEGER, N INTEGER, N_total INTEGER, flops_per_token_6N REAL, flops_per_token_exact REAL,
    D INTEGER, tokens INTEGER, steps INTEGER, batch_size INTEGER, seed INTEGER, lr REAL,
    status TEXT NOT NULL DEFAULT 'pending', step INTEGER DEFAULT 0, best_test_loss REAL, final_test_loss REAL,
    wall_time REAL DEFAULT 0, tokens_per_s REAL, updated REAL
);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT, step INTEGER, tokens INTEGER, flops_6N REAL, flops_exact REAL, train_loss REAL, test_loss REAL,
    test_bits_per_byte REAL, PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS positions (run_id TEXT, step INTEGER, losses TEXT, PRIMARY KEY (run_id, step));
"""

RUN_COLUMNS = ("run_id", "name", "group_id", "config", "tags", "kind", "n_layer", "d_model", "d_ff", "d_attn",
               "n_heads", "n_ctx", "vocab_size", "N", "N_total", "flops_per_token_6N", "flops_per_token_exact", "D",
               "tokens", "steps", "batch_size", "seed", "lr")


class ResultsDB:
    def __init__(self, sweep_dir: str | Path, readonly: bool = False):
        self.path = Path(sweep_dir) / DB_NAME
        if readonly:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=60)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.executescript(SCHEMA)
        self.conn.execute("PRAGMA busy_timeout=60000")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_runs(self, rows: Iterable[dict[str, Any]]) -> None:
        """Register planned runs; runs already present (by id) keep their status and results, and take the
        spec's current name and tags (labels only: the id is the config's hash)."""
        with self.conn:
            self.conn.executemany(
                f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}, updated) "
                f"VALUES ({', '.join('?' for _ in RUN_COLUMNS)}, ?) "
                f"ON CONFLICT (run_id) DO UPDATE SET name = excluded.name, tags = excluded.tags",
                [tuple(r[c] for c in RUN_COLUMNS) + (time.time(),) for r in rows])

    def status(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)
        rows = self.conn.execute(f"SELECT run_id, status FROM runs WHERE run_id IN ({', '.join('?' for _ in ids)})",
                                 ids).fetchall()
        return dict(rows)

    def truncate(self, run_ids: list[str], after_step: int) -> None:
        """Forget evaluations past a checkpoint: they are redone from it."""
        marks = ", ".join("?" for _ in run_ids)
        with self.conn:
            for table in ("curves", "positions"):
                self.conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks}) AND step > ?", [*run_ids, after_step])
            self.conn.execute(f"UPDATE runs SET status = 'running', step = ? WHERE run_id IN ({marks}) "
                              f"AND status != 'diverged'", [after_step, *run_ids])

    def record_eval(self, records: list[dict[str, Any]]) -> None:
        """One evaluation of a group: curve points, per-position losses and run summaries, in one transaction."""
        with self.conn:
            for r in records:
                self.conn.execute(
                    "INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["run_id"], r["step"], r["tokens"], r["flops_6N"], r["flops_exact"], r["train_loss"],
                     r["test_loss"], r["test_bits_per_byte"]))
                self.conn.execute("INSERT OR REPLACE INTO positions VALUES (?, ?, ?)",
                                  (r["run_id"], r["step"], json.dumps(r["test_loss_per_position"])))
                best = self.conn.execute("SELECT MIN(test_loss) FROM curves WHERE run_id = ?",
                                         (r["run_id"],)).fetchone()[0]
                self.conn.execute(
                    "UPDATE runs SET status = ?, step = ?, final_test_loss = ?, best_test_loss = ?, "
                    "wall_time = wall_time + ?, tokens_per_s = ?, updated = ? WHERE run_id = ?",
                    (r["status"], r["step"], r["test_loss"], best, r["wall_time"], r["tokens_per_s"], time.time(),
                     r["run_id"]))

    def mark(self, run_ids: list[str], status: str) -> None:
        with self.conn:
            self.conn.executemany("UPDATE runs SET status = ?, updated = ? WHERE run_id = ?",
                                  [(status, time.time(), r) for r in run_ids])


def load(sweep_dir: str | Path) -> dict[str, Any]:
    """The results of a sweep as pandas DataFrames: {"runs", "curves", "positions"}.

    curves has one row per evaluation with the run's N, N_total and status joined in; positions has one row per
    (run, step, position).
    """
    import pandas as pd

    path = Path(sweep_dir) / DB_NAME
    if not path.exists():
        from jscale.config import JscaleError

        raise JscaleError(f"{sweep_dir}: no {DB_NAME} here (not a jscale sweep directory)")
    with ResultsDB(sweep_dir, readonly=True) as db:
        runs = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", db.conn)
        curves = pd.read_sql_query(
            "SELECT c.*, r.N, r.N_total, r.name, r.status, r.D AS D_limit, r.batch_size FROM curves c "
            "JOIN runs r USING (run_id) ORDER BY c.run_id, c.step", db.conn)
        raw = pd.read_sql_query("SELECT * FROM positions ORDER BY run_id, step", db.conn)
    rows = [(r.run_id, r.step, t + 1, loss) for r in raw.itertuples() for t, loss in enumerate(json.loads(r.losses))]
    positions = pd.DataFrame(rows, columns=["run_id", "step", "position", "loss"])
    return {"runs": runs, "curves": curves, "positions": positions}
