"""Progress bars (tqdm) for a run or a sweep, showing the latest losses; the time line `jscale run` prints at the
end."""

from __future__ import annotations

import contextlib
import math
import time


def show_losses(bar, records: list[dict]) -> None:
    """The progress bar's postfix: the latest validation loss (the best member's, for an ensemble) and the train
    loss, an interval mean."""
    best = min(records, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
    bar.set_postfix_str(f"val {best['val_loss']:.4f} train(mean) {best['train_loss']:.4f}"
                        + (f" best of {len(records)}" if len(records) > 1 else ""))


def set_bar(bar, n: int) -> None:
    if bar.n != n:  # a damaged checkpoint made the run resume earlier than the bar guessed
        bar.n = n
        bar.refresh()


def progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


TIMING_PARTS = (("train", "training steps"), ("anneal", "cooldown branches"), ("eval", "evaluations"),
                ("compile_wait", "waiting for compilation"), ("checkpoint", "checkpoints"), ("init", "initialising"),
                ("data", "data"), ("windows", "choosing evaluation windows"),
                ("measure", "measuring ensemble speed"), ("wait", "waiting for another worker's pilots"))


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, part: str):
    """Add the seconds the block takes to timings[part] (one of TIMING_PARTS' keys), even when it raises; nothing
    when timings is None."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[part] = timings.get(part, 0.0) + time.perf_counter() - t0


def describe_timings(timings: dict[str, float], wall: float) -> str:
    """Where a `jscale run` spent its wall time, from run_sweep(timings=...): each part in seconds and percent, and
    what is left (choosing windows, tuning, the database, tracking)."""
    return f"time: {wall:.1f} s: " + describe_parts(timings, wall, TIMING_PARTS)


def describe_parts(timings: dict[str, float], total: float, labels) -> str:
    """'label S s (P%), ..., other S s (P%)': each part of (key, label) in labels against total."""
    parts = [(label, timings.get(key, 0.0)) for key, label in labels if timings.get(key, 0.0) >= 0.05]
    other = max(0.0, total - sum(seconds for _, seconds in parts))
    pct = lambda seconds: f"{100 * seconds / total:.0f}%" if total > 0 else "-"
    return ", ".join(f"{label} {seconds:.1f} s ({pct(seconds)})" for label, seconds in parts) \
        + f", other {other:.1f} s ({pct(other)})"
