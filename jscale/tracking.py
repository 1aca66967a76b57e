"""Experiment trackers: TensorBoard event files (tensorboardX, no TensorFlow) by default, Weights & Biases as an
option. One tracked run per jscale run, so a sweep's members are separate runs in either tool, named alike in both
("L=2 D=40 H=5 seed=0"; TensorBoard's folder OUT/tb/NAME [RUN_ID]).

Every `logging.every` steps (training scalars, means over the steps since the last such point):
  train/loss, train/grad_norm, train/lr, train/tokens, train/epochs, perf/tokens_per_s (per member), perf/mfu
What each evaluation logs, at its optimizer step:
  train/loss_interval_mean   the training loss averaged over the steps since the last evaluation (not one batch)
  train/grad_norm_interval_mean, train/lr, train/tokens, train/epochs
  <set>/loss, <set>/loss_se, <set>/bits_per_byte   for validation, test and every extra evaluation set
  perf/tokens_per_s (per member), perf/mfu (where the device's peak FLOP/s is known)
The tracked config holds the run's N, N_total, FLOPs per token (6N and exact) and tokens per parameter besides its
keys. A resumed run rewinds its TensorBoard files to the step it resumes from (purge_step), so a crash leaves no
duplicate points; its W&B run is the one this run directory's attempt started (its id kept in DIR/wandb-ids): a
fresh start in the same directory, or the same config in another directory, is a new W&B run.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from jscale import accounting
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
        out.update({f"{split}/loss": e["loss"], f"{split}/loss_se": e["se"],
                    f"{split}/bits_per_byte": e["bits_per_byte"]})
    return out


def train_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars logged every logging.every steps (names as in the module docstring)."""
    out = {"train/loss": record["train_loss"], "train/grad_norm": record["grad_norm"], "train/lr": record["lr"],
           "train/tokens": record["tokens"], "train/epochs": record["epochs"],
           "perf/tokens_per_s": record["tokens_per_s"]}
    if record.get("mfu") is not None:
        out["perf/mfu"] = record["mfu"]
    return out


def tracked_config(cfg, tokens: int | None = None) -> dict[str, Any]:
    """A run's config as trackers show it: its keys, and what scaling analyses group and filter runs by."""
    acc = accounting.account(cfg.model)
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.n_ctx if tokens is None else tokens
    return cfg.to_dict() | {"N": acc.N, "N_total": acc.N_total, "flops_per_token_6N": acc.train_flops_6N,
                            "flops_per_token_exact": acc.train_flops_exact,
                            "tokens_per_param": tokens / acc.N_total}


def _wandb_id(path: Path, step: int) -> str:
    """This attempt's W&B run id, kept in a file: a new one for a fresh start (step 0), the kept one on resume."""
    if step > 0 and path.is_file():
        kept = path.read_text().strip()
        if re.fullmatch(r"[a-f0-9]{16}", kept):
            return kept
    new = secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


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
            SummaryWriter = _summary_writer()
            # TensorBoard drops events at or after purge_step: those logged after the checkpoint resumed from.
            # tensorboardX names an event file by the second and the host only, so a run resumed within the same
            # second would overwrite the first file; nanoseconds keep each start's file, in order.
            self._tb = [SummaryWriter(str(d), purge_step=step + 1 if step else None, flush_secs=30,
                                      filename_suffix=f".{time.time_ns()}") for d in self.tb_dirs]
        if self.cfg.wandb and self.cfg.wandb_mode != "disabled":
            wandb = _import_wandb()
            ids_dir = Path(self.wandb_dir or ".") / "wandb-ids"
            for key, name, config in zip(self.ids, self.names, self.configs):
                self._wandb.append(wandb.init(
                    project=self.cfg.wandb_project, entity=self.cfg.wandb_entity or None, mode=self.cfg.wandb_mode,
                    name=name, id=_wandb_id(ids_dir / key, step), group=self.group, config=config, resume="allow",
                    reinit="create_new", dir=str(self.wandb_dir) if self.wandb_dir else None,
                    settings=wandb.Settings(silent=True)))

    @property
    def active(self) -> bool:
        return bool(self._tb or self._wandb)

    def record_train(self, records: list[dict[str, Any]]) -> None:
        """The training scalars of every logging.every steps, one record per run."""
        self._log([train_scalars(r) for r in records], [r["step"] for r in records])

    def record(self, records: list[dict[str, Any]]) -> None:
        """An evaluation's scalars, one record per run."""
        self._log([scalars(r) for r in records], [r["step"] for r in records])

    def _log(self, rows: list[dict[str, float]], steps: list[int]) -> None:
        for i, (values, step) in enumerate(zip(rows, steps)):
            if self._tb:
                for key, value in values.items():
                    self._tb[i].add_scalar(key, value, step)
            if self._wandb:
                self._wandb[i].log(values, step=step)

    def close(self) -> None:
        """Close every writer even when one fails (a full disk fails the flush inside close): none is left half
        open; the first failure is raised after all are closed."""
        writers, self._tb, runs, self._wandb = self._tb, [], self._wandb, []
        failed = None
        for finish in [w.close for w in writers] + [r.finish for r in runs]:
            try:
                finish()
            except Exception as e:  # noqa: BLE001 (re-raised below, once every writer is closed)
                failed = failed or e
        if failed is not None:
            raise failed


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch: where torch is installed, tensorboardX imports it at
    import time only to accept torch tensors (2.3 s of its 2.35 s import in a profiled `jscale run` on the 2-core CPU,
    2026-12-06), and jscale logs Python floats. A torch the process has already imported is left alone."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError("logging.wandb: needs the wandb package (pip install 'jscale[wandb]'), or set "
                          "logging.wandb = false") from None
    return wandb


def tracker_for_run(cfg, run_dir: Path) -> Tracker:
    """The tracker of one `jscale train` run: RUN/tb, and a W&B run named after the directory."""

    return Tracker(cfg.logging, [run_dir.resolve().name], [run_dir.resolve().name], [run_dir / "tb"],
                   [tracked_config(cfg)], wandb_dir=run_dir)


def tb_folder(name: str, run_id: str) -> str:
    """A sweep member's TensorBoard folder: its name as W&B shows it, and its id (names need not be unique)."""
    return f"{re.sub(r'[^A-Za-z0-9_.=+-]+', ' ', name).strip()} [{run_id}]"


def tracker_for_group(cfgs: list, run_ids: list[str], group_id: str, out: Path, names: list[str]) -> Tracker:
    """The tracker of one sweep group: OUT/tb/NAME [RUN_ID] per member, W&B runs named alike and grouped by the
    sweep's directory."""
    return Tracker(cfgs[0].logging, run_ids, list(names),
                   [out / "tb" / tb_folder(n, r) for n, r in zip(names, run_ids)],
                   [tracked_config(c) | {"run_id": r, "group_id": group_id} for c, r in zip(cfgs, run_ids)],
                   group=out.resolve().name, wandb_dir=out)
