"""Training: the step, compiled programs and ensembles, checkpoints and sinks, and the resumable loop.

- `step`: `train_step(state, batch, hparams)` and the evaluation step (pure; hyperparameters are arrays, so they
  vmap), the optimiser and the learning-rate schedules
- `programs`: a group's init, train steps (up to 16 a call) and evaluation step compiled ahead of time per shape and
  mesh; ensembles (vmap or map over members); device peaks for MFU
- `checkpoints`: orbax checkpoints with a checksum per step, failed writes reported in one line
- `sinks`: a single run's evaluations in metrics.jsonl
- `loop`: `train_loop` (one run or an ensemble, resumed bitwise) and `train` (`jscale train`)

Every name below is importable from `jscale.train` itself.
"""

from jscale.train.checkpoints import Checkpoints, state_checksum
from jscale.train.loop import (DIVERGED_LOSS_FACTOR, check_intervals, check_runnable, evaluate,
                               prepare_eval_windows, train, train_loop)
from jscale.train.programs import (ENSEMBLE_MODES, PEAK_FLOPS, STEPS_PER_CALL, GroupSteps, LazyInit,
                                   compile_steps, compiled, device_peak_flops, ensemble, member_shape_key,
                                   multi_step, program_key, seconds_per_step, single_init, stack_members)
from jscale.train.sinks import JsonlSink
from jscale.train.step import (SCHEDULES, Hparams, TrainState, eval_context, hparams_from_config, init_state,
                               learning_rate, make_eval_step, make_optimizer, make_train_step, padded_chunks,
                               per_position_loss, summarize_eval)

__all__ = [
    "Checkpoints", "state_checksum", "DIVERGED_LOSS_FACTOR", "check_intervals", "check_runnable", "evaluate",
    "prepare_eval_windows", "train", "train_loop",
    "ENSEMBLE_MODES", "PEAK_FLOPS", "STEPS_PER_CALL", "GroupSteps", "LazyInit", "compile_steps", "compiled",
    "device_peak_flops", "ensemble", "member_shape_key", "multi_step", "program_key", "seconds_per_step",
    "single_init", "stack_members",
    "JsonlSink", "SCHEDULES", "Hparams", "TrainState", "eval_context", "hparams_from_config", "init_state",
    "learning_rate", "make_eval_step", "make_optimizer", "make_train_step", "padded_chunks", "per_position_loss",
    "summarize_eval",
]
