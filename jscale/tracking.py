"""Experiment trackers: TensorBoard event files (tensorboardX, no TensorFlow) by default, Weights & Biases as an
option. One tracked run per jscale run, so a sweep's members are separate runs in either tool.

What each evaluation logs, at its optimizer step:
  train/loss_interval_mean   the training loss averaged over the steps since the last evaluation (not one batch)
  train/grad_norm_interval_mean, train/lr, train/tokens, train/epochs
  <set>/loss, <set>/loss_se, <set>/bits_per_byte   for validation, test and every extra evaluation set
  perf/tokens_per_s (per member), perf/mfu (where the device's peak FLOP/s is known)
A resumed run rewinds its TensorBoard files to the step it resumes from (purge_step), so a crash leaves no
duplicate points.
"""

from __future__ import annotations

import time

from pathlib import Path
from typing import Any

from jscale.config import ConfigError, LoggingConfig


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars one evaluation record logs (names as in the module docstring)."""
    out = {"train/loss_interval_mean": record["train_loss"], "train/lr": record["lr"], "train/tokens": record["tokens"],
           "train/epochs": record["epochs"], "perf/tokens_per_s": record["tokens_per_s"]}
    if record.get("grad_norm") is not None:
        out["train/grad_norm_interval_mean"] = record["grad_norm"]
    if record.get("mfu") is not None:
        out["perf/mfu"] = record["mfu"]
    for split, e in record["evals"].items():
        out.update({f"{split}/loss": e["loss"], f"{split}/loss_se": e["se"], f"{split}/bits_per_byte": e["bits_per_byte"]})
    return out


class Tracker:
    """Trackers for the runs one train loop trains (one, or a vmapped group's members).

    tb_dirs: a TensorBoard directory per run; ids / names / group / configs: how W&B knows and shows them (a
    resumed run continues its W&B run).
    """

    def __init__(self, cfg: LoggingConfig, ids: list[str], names: list[str], tb_dirs: list[Path],
                 configs: list[dict], group: str | None = None, wandb_dir: Path | None = None):
        self.cfg, self.ids, self.names, self.tb_dirs, self.configs = cfg, ids, names, tb_dirs, configs
        self.group = group
        self.wandb_dir = wandb_dir
        self._tb: list[Any] = []
        self._wandb: list[Any] = []
        if cfg.wandb and cfg.wandb_mode != "disabled":
            _import_wandb()  # a missing package is an error before any training

    def start(self, step: int) -> None:
        """Open the writers for runs that resume from `step` (0 for a new run)."""
        if self.cfg.tensorboard:
            from tensorboardX import SummaryWriter

            # TensorBoard drops events at or after purge_step: those logged after the checkpoint resumed from.
            # tensorboardX names an event file by the second and the host only, so a run resumed within the same
            # second would overwrite the first file; nanoseconds keep each start's file, in order.
            self._tb = [SummaryWriter(str(d), purge_step=step + 1 if step else None, flush_secs=30,
                                      filename_suffix=f".{time.time_ns()}") for d in self.tb_dirs]
        if self.cfg.wandb and self.cfg.wandb_mode != "disabled":
            wandb = _import_wandb()
            for run_id, name, config in zip(self.ids, self.names, self.configs):
                self._wandb.append(wandb.init(
                    project=self.cfg.wandb_project, entity=self.cfg.wandb_entity or None, mode=self.cfg.wandb_mode,
                    name=name, id=run_id, group=self.group, config=config, resume="allow", reinit="create_new",
                    dir=str(self.wandb_dir) if self.wandb_dir else None, settings=wandb.Settings(silent=True)))

    def record(self, records: list[dict[str, Any]]) -> None:
        for i, r in enumerate(records):
            values = scalars(r)
            if self._tb:
                for key, value in values.items():
                    self._tb[i].add_scalar(key, value, r["step"])
            if self._wandb:
                self._wandb[i].log(values, step=r["step"])

    def close(self) -> None:
        for w in self._tb:
            w.close()
        for run in self._wandb:
            run.finish()
        self._tb, self._wandb = [], []


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError("logging.wandb: needs the wandb package (pip install 'jscale[wandb]'), or set "
                          "logging.wandb = false") from None
    return wandb


def tracker_for_run(cfg, run_dir: Path) -> Tracker:
    """The tracker of one `jscale train` run: RUN/tb, and a W&B run named after the directory."""
    import hashlib

    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]  # one W&B run per directory
    return Tracker(cfg.logging, [run_id], [run_dir.resolve().name], [run_dir / "tb"], [cfg.to_dict()],
                   wandb_dir=run_dir)


def tracker_for_group(cfgs: list, run_ids: list[str], group_id: str, out: Path, names: list[str]) -> Tracker:
    """The tracker of one sweep group: OUT/tb/RUN_ID per member, W&B runs grouped by the sweep's directory."""
    return Tracker(cfgs[0].logging, run_ids, [f"{out.resolve().name}/{n}" for n in names],
                   [out / "tb" / r for r in run_ids],
                   [c.to_dict() | {"run_id": r, "group_id": group_id} for c, r in zip(cfgs, run_ids)],
                   group=out.resolve().name, wandb_dir=out)
