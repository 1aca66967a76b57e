"""A run's (or a group's) orbax checkpoints, each step with a checksum, written whole or reported in one line.

Orbax reads garbled array bytes back without complaint, so every saved step's SHA-256 is kept in checksums.json
beside the steps; `Checkpoints.restore` falls back past a step that does not read back whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jscale.errors import ResourceError, resource_error
from jscale.files import write_atomic


def _checkpoint_manager(directory: Path, keep: int):
    import orbax.checkpoint as ocp

    try:
        return ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True))
    except OSError as e:
        raise resource_error(e, directory, "cannot create the checkpoint directory") from None


# Messages by which orbax/TensorStore report what is the disk's fault rather than a bug.
_DISK_FAULTS = ("RESOURCE_EXHAUSTED", "No space left", "Read-only file system", "Permission denied",
                "Disk quota exceeded", "database or disk is full")


def state_checksum(state) -> str | None:
    """SHA-256 of every leaf's bytes, to catch a checkpoint whose files were damaged after it was written (orbax
    reads garbled array bytes without complaint). None where the state is not all on this host."""
    if jax.process_count() > 1:
        return None
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return h.hexdigest()


# After a failed checkpoint write, orbax's and TensorStore's threads go on printing tracebacks ("Event loop is
# closed") until the process ends. From then on fd 2 goes to /dev/null and the real stderr is kept here, so the CLI
# can print its one line there and leave at once (cli.main).
REAL_STDERR_FD: int | None = None


@contextlib.contextmanager
def _quiet_writer(*names: str):
    """Keep orbax's and TensorStore's own reports of a failed write (log records, and tracebacks that their
    threads print) off stderr while a checkpoint is written: a failure is reported in one line by
    Checkpoints.save. On success whatever they printed is passed through."""
    import logging
    import sys
    import tempfile

    global REAL_STDERR_FD
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    try:
        yield
    except BaseException:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        REAL_STDERR_FD = saved_fd
        raise
    else:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        captured.seek(0)
        text = captured.read()
        if text:
            os.write(2, text)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        captured.close()


class Checkpoints:
    """A run's (or a group's) orbax checkpoints with a checksum per step in checksums.json beside them.

    `restore` takes the newest step that is not ahead of what the results sink has recorded (a step whose
    evaluations were lost would leave a hole in the learning curve) and that reads back whole; a damaged or
    unusable step is deleted, with a line saying so, and the one before it tried, down to a fresh start."""

    def __init__(self, directory: Path, keep: int):
        self.directory, self.keep = directory, keep
        self.manager = _checkpoint_manager(directory, keep)
        self.sums_path = directory / "checksums.json"

    def _sums(self) -> dict[str, str]:
        try:
            return json.loads(self.sums_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _delete(self, step: int) -> None:
        try:
            self.manager.delete(step)
        except Exception:  # noqa: BLE001 (a step directory too damaged for orbax: remove it by hand)
            shutil.rmtree(self.directory / str(step), ignore_errors=True)
        self.manager.reload()

    def _fresh_manager(self) -> None:
        """A new CheckpointManager: a failed restore leaves orbax's manager unable to read even whole steps (an
        emptied step made it refuse every earlier one, which were then deleted)."""
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 (closing a manager in that state may fail too)
            pass
        self.manager = _checkpoint_manager(self.directory, self.keep)

    def _missing(self, step: int) -> str | None:
        """What makes a step directory unreadable before orbax is asked: its metadata, or its state, missing."""
        d = self.directory / str(step)
        if not (d / "_CHECKPOINT_METADATA").is_file():
            return "its metadata file is missing"
        if not any(p.is_dir() for p in d.iterdir()):
            return "it holds no saved state"
        return None

    def restore(self, target, recorded: int, log: Callable[[str], None]) -> tuple[Any, int]:
        import orbax.checkpoint as ocp

        sums = self._sums()
        for step in sorted(self.manager.all_steps(), reverse=True):
            if step > recorded:
                log(f"checkpoint {self.directory / str(step)}: its evaluations after step {recorded} are missing "
                    f"from the results; training again from an earlier step to redo them")
                self._delete(step)
                continue
            problem = self._missing(step)
            if problem is None:
                try:
                    state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
                    problem = None if sums.get(str(step)) in (None, state_checksum(state)) else "checksum mismatch"
                except Exception as e:  # noqa: BLE001 (any unreadable checkpoint: fall back to the one before)
                    problem = " ".join(str(e).split())[:200] or type(e).__name__
                    self._fresh_manager()
            if problem is None:
                return state, step
            earlier = [s for s in self.manager.all_steps() if s < step]
            log(f"checkpoint {self.directory / str(step)} is damaged ({problem}); "
                + (f"falling back to step {max(earlier)}" if earlier else "no earlier checkpoint: starting afresh"))
            self._delete(step)
        return None, 0

    def save(self, step: int, state) -> None:
        import orbax.checkpoint as ocp

        try:
            with _quiet_writer("absl", "asyncio", "orbax"):  # a failed write is reported below, in one line
                self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
                self.manager.wait_until_finished()
            checksum = state_checksum(state)
            if checksum is not None and jax.process_index() == 0:
                sums = {k: v for k, v in self._sums().items() if int(k) in set(self.manager.all_steps())}
                write_atomic(self.sums_path, json.dumps({**sums, str(step): checksum}, indent=1))
        except (OSError, ValueError, RuntimeError) as e:
            text = " ".join(str(e).split())
            if isinstance(e, ResourceError) or not (isinstance(e, OSError) or any(f in text for f in _DISK_FAULTS)):
                raise
            for tmp in self.directory.glob("*tmp*"):  # orbax's half-written step, if any
                shutil.rmtree(tmp, ignore_errors=True)
            reason = next((f for f in _DISK_FAULTS if f in text), None) or (getattr(e, "strerror", None) or text)
            reason = "no space left on the device" if reason in ("RESOURCE_EXHAUSTED", "No space left") else reason
            raise ResourceError(f"{self.directory}: cannot write the checkpoint of step {step}: {reason.lower()}; "
                                f"free space and re-run to resume from the last whole checkpoint") from None

    def close(self) -> None:
        self.manager.close()
