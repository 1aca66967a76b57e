"""Where a single run's evaluations go: one JSON line each in run_dir/metrics.jsonl, and its cooldown branches'
in run_dir/anneals.jsonl (a sweep's go to its results database, `jscale.grid.DBSink`, with the same methods)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jscale.errors import resource_error
from jscale.files import write_atomic


class JsonlSink:
    """A single run's evaluations, one JSON line each, in run_dir/metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path
        self.anneals_path = path.with_name("anneals.jsonl")
        self.damaged: tuple[int, int] | None = None  # (line, lines) of a damaged record found by records()

    def records(self) -> list[dict]:
        """The records up to the first damaged line. A last line cut short is a crash mid-write; a damaged line
        before others is damage (self.damaged says where): either way the records from it on are not trusted, so
        the run resumes from a checkpoint before it and writes them again, bitwise the same."""
        self.damaged = None
        if not self.path.exists():
            return []
        out = []
        lines = self.path.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    self.damaged = (i + 1, len(lines))
                break
        return out

    def last_step(self) -> int:
        """The newest step whose evaluation is recorded (0 if none): no checkpoint past it can be resumed."""
        return max((r["step"] for r in self.records()), default=0)

    def resume(self, step: int) -> None:
        """Records past the checkpoint were logged by a run that died before its next checkpoint: redo them."""
        keep = [r for r in self.records() if r["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        if self.anneals_path.exists():  # branches that left the run after the checkpoint are redone too
            anneals = [r for r in self.anneals() if r["start"] <= step]
            write_atomic(self.anneals_path, "".join(json.dumps(r) + "\n" for r in anneals))

    def anneals(self) -> list[dict]:
        """The cooldown branches recorded, one per horizon (see TrainConfig.anneal_horizons)."""
        if not self.anneals_path.exists():
            return []
        out = []
        for line in self.anneals_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def record_blocks(self, blocks: dict[str, np.ndarray], n_ctx: int, context: int) -> None:
        """Which document each final-evaluation window of each set comes from (window_blocks.json)."""
        path = self.path.with_name("window_blocks.json")
        write_atomic(path, json.dumps({"n_ctx": n_ctx, "context": context,
                                       "blocks": {k: np.asarray(v).tolist() for k, v in blocks.items()}}))

    def record_anneal(self, records: list[dict]) -> None:
        try:
            with self.anneals_path.open("a") as f:
                for r in records:
                    windows = {k: np.round(v.astype(float), 5).tolist() for k, v in r["per_window"].items()}
                    f.write(json.dumps({**r, "per_window": windows}) + "\n")
        except OSError as e:
            raise resource_error(e, self.anneals_path, "cannot write") from None

    def record(self, records: list[dict]) -> None:
        try:
            with self.path.open("a") as f:
                for r in records:
                    windows = {k: np.round(v.astype(float), 5).tolist() for k, v in (r.get("per_window") or {}).items()}
                    f.write(json.dumps({**r, "per_window": windows or None, "window_positions": None}) + "\n")
        except OSError as e:
            raise resource_error(e, self.path, "cannot write") from None
