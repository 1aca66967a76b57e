"""Published data shipped with jscale (see README.md in this folder for provenance)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
CHINCHILLA_CSV = HERE / "svg_extracted_data.csv"


def chinchilla_runs(drop_highest: int = 5):
    """Epoch's extraction of Chinchilla's runs as a DataFrame with N, C, D = C / 6N and loss, the drop_highest
    highest-loss rows dropped (the published protocol drops 5)."""
    import pandas as pd

    df = pd.read_csv(CHINCHILLA_CSV)
    df = df.rename(columns={"Model Size": "N", "Training FLOP": "C"})[["N", "C", "loss"]]
    df["D"] = df["C"] / (6 * df["N"])
    df = df.sort_values("loss", kind="stable")
    return (df.iloc[:-drop_highest] if drop_highest else df).reset_index(drop=True)
