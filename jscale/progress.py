"""Progress bars (tqdm) for a run or a sweep, showing the latest losses."""

from __future__ import annotations

import math


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
