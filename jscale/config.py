"""Typed experiment configuration: TOML files and dotted `key=value` overrides mapped onto frozen dataclasses.

Every value is validated here, before any array is allocated or any function compiled, and every problem is
reported as one `ConfigError` line that names the key. This module is the bottom of jscale (only jscale.errors
is below it): what needs a tokenizer or the model's parameter count to fill in (the vocabulary size, warmup given
in tokens per parameter) is done by `jscale.resolve`, which loads a config ready to run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from jscale.errors import ConfigError, JscaleError, ResourceError, resource_error  # noqa: F401 (re-exported)

MODEL_KINDS = ("transformer", "universal", "lstm", "transformer_xl")

# The model keys that only some kinds read. Any other kind refuses a non-default value (a setting that would be
# silently ignored); tests/test_config.py walks every key and kind and checks each is used or refused.
KIND_ONLY_KEYS = {
    "n_heads": ("transformer", "universal", "transformer_xl"),
    "n_kv_heads": ("transformer", "universal"),
    "d_ff": ("transformer", "universal", "transformer_xl"),
    "d_attn": ("transformer", "universal", "transformer_xl"),
    "attention": ("transformer", "universal"),
    "reuse": ("universal",),
    "step_embedding": ("universal",),
    "lstm_impl": ("lstm",),
    "mem_len": ("transformer_xl",),
    "eval_mem_len": ("transformer_xl",),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    kind: str = "transformer"  # transformer | universal (blocks reused over depth) | lstm | transformer_xl
    n_layer: int = 2  # Transformer blocks; for universal the unique blocks; for lstm the LSTM layers
    d_model: int = 128  # for lstm: the hidden size
    n_heads: int = 4  # attention heads (d_attn must be divisible by it)
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (multi-head), 1 = multi-query, else grouped
    reuse: int = 1  # universal: how many times the stack of unique blocks is applied
    step_embedding: bool = True  # universal: add a sinusoidal embedding of the repeat index (Dehghani et al.)
    lstm_impl: str = "scan"  # lstm: scan (lax.scan, any device) | cudnn (jax.experimental.rnn, GPU only)
    mem_len: int = 0  # transformer_xl: positions of each layer's memory of the previous segment
    eval_mem_len: int | None = None  # transformer_xl: memory at evaluation (None = mem_len)
    d_ff: int | None = None  # None: 4 * d_model
    d_attn: int | None = None  # None: d_model
    n_ctx: int = 128  # context length in tokens
    vocab_size: int = 256  # set from the tokenizer by jscale.resolve
    dropout: float = 0.0  # dropout rate in training (0 as Kaplan)
    tie_embeddings: bool = True  # the unembedding reuses the embedding matrix (GPT-2)
    dtype: str = "auto"  # compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16
    attention: str = "auto"  # auto (cuDNN where the shape allows, einsum on CPU, XLA otherwise) | xla | cudnn | einsum
    init_from: str = ""  # start from these weights instead of a random init: hf:DIR (a GPT-2 directory)

    @property
    def d_ff_(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def d_attn_(self) -> int:
        return self.d_attn if self.d_attn is not None else self.d_model

    @property
    def d_head(self) -> int:
        return self.d_attn_ // self.n_heads

    @property
    def n_kv_heads_(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def eval_mem_len_(self) -> int:
        return self.mem_len if self.eval_mem_len is None else self.eval_mem_len

    def check_length(self, T: int) -> None:
        """Refuse an input longer than the context the model was built for (a Transformer's position table would
        be read out of range, giving NaN logits everywhere)."""
        if T > self.n_ctx:
            raise ConfigError(f"model.n_ctx: the input has {T} tokens, more than the model's context of "
                              f"{self.n_ctx}; cut it into windows of at most {self.n_ctx}")

    @property
    def depth(self) -> int:
        """Blocks applied per token: n_layer, times reuse for a Universal Transformer."""
        return self.n_layer * (self.reuse if self.kind == "universal" else 1)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    corpus: str = "builtin:stdlib"  # builtin:stdlib | files (a file, directory or glob) | tfds:NAME | bin:DIR | hf:SRC
    bin_dtype: str = "uint16"  # bin: corpora: the token files' integer type (uint8 | uint16 | uint32)
    tokenizer: str = "bytes"  # bytes | bpe (trained on train) | gpt2 | tiktoken:NAME | file:PATH (HF tokenizer.json)
    vocab_size: int = 4096  # BPE vocabulary size (bytes is always 256)
    validation_fraction: float = 0.05  # share of documents in the validation split (model selection reads it)
    test_fraction: float = 0.05  # share of documents in the test split (read only for reporting)
    validation: str = ""  # local corpora: files or a glob that are the validation split instead of a share
    test: str = ""  # local corpora: files or a glob that are the test split instead of a share
    extra_eval: str = ""  # local corpora: more evaluation sets no model trains on, "NAME=GLOB,NAME=GLOB"
    max_train_tokens: int = 0  # D: train on D tokens drawn as random chunks over the whole train split; 0 = all
    subset_seed: int = 0  # which chunks make up the D tokens (subsets of one seed are nested)
    subset_chunk: int = 4096  # tokens per chunk of a D-token subset
    eval_windows: int = 0  # windows of n_ctx + 1 tokens per evaluation set at the final evaluation; 0: eval_tokens
    eval_tokens: int = 600_000  # sizes eval_windows when 0 (a paired difference of two runs: SE ~0.002 nats)
    curve_eval_windows: int = 256  # evaluations before the last score this evenly spaced subset; 0 = all windows
    # data.eval_se, in a tuned sweep: the final runs score the windows that the standard error of a paired difference
    # needs, measured on the point's two best pilots (per-window spread and within-document correlation;
    # jscale.noise.windows_for_se), at most eval_tokens' worth
    eval_se: float = 0.0  # > 0: the paired standard error (nats) a tuned sweep's final evaluations are sized for
    curve_eval_se: float = 0.0  # likewise for the evaluations before the last (sizes curve_eval_windows)
    cache_dir: str = ""  # tokenized corpora; "" = $JSCALE_CACHE or ~/.cache/jscale
    tfds_data_dir: str = ""  # data_dir for tfds: corpora; "" = TFDS's default
    download: bool = True  # tfds: download and prepare a dataset that is not prepared (where there is network)
    hf_name: str = ""  # hf: corpora from the hub: the dataset's configuration name (wikitext-103-raw-v1)
    text_column: str = ""  # tfds:/hf: corpora: the column that holds the text; "" = "text" or the only text one


PILOT_SIZED = ("eval_se", "curve_eval_se")  # data keys whose evaluation sizes a tuned sweep's pilots decide


def pilot_sized(d: "DataConfig") -> list[str]:
    """The PILOT_SIZED keys this data config sets (> 0): its evaluations are sized after a tuned sweep's pilots."""
    return [key for key in PILOT_SIZED if getattr(d, key)]


def eval_window_counts(d: "DataConfig", n_ctx: int) -> tuple[int, int]:
    """(windows at the final evaluation, windows at the evaluations before it) per evaluation set."""
    final = d.eval_windows or -(-d.eval_tokens // (n_ctx + 1))
    return final, min(final, d.curve_eval_windows or final)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32  # sequences per step
    steps: int = 1000  # optimizer steps
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 100  # linear warmup from 0 to lr
    warmup_tokens: int = 0  # > 0: warmup over this many tokens instead (sets warmup_steps)
    warmup_per_param: float = 0.0  # > 0: warmup over this many tokens per parameter, N_total (Porian et al.: ~1)
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay: constant, then linear cooldown) | constant
    decay_fraction: float = 0.2  # wsd: the share of the steps the linear cooldown takes
    anneal_branches: int = 0  # wsd: also anneal copies of the run at steps/2, steps/4, ... (this many): convergence
    final_lr_fraction: float = 0.0  # the schedule ends at lr * this (0 as Kaplan, 0.1 as Chinchilla)
    weight_decay: float = 0.1  # decoupled (AdamW), on matrices only
    b1: float = 0.9  # Adam's first-moment decay
    b2: float = 0.95  # Adam's second-moment decay (0.99 at small batches)
    eps: float = 1e-8  # Adam's epsilon
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    seed: int = 0  # parameter initialisation and dropout
    data_seed: int | None = None  # batch sampling; None = seed
    eval_every: int = 100  # steps between evaluations (and the last step)
    eval_log_points: int = 0  # > 0: also evaluate at this many log-spaced steps from step 1 (early curve points)
    checkpoint_every: int = 500  # steps between checkpoints (a multiple of eval_every)
    keep_checkpoints: int = 3  # newest checkpoints kept

    def is_eval_step(self, done: int) -> bool:
        """Whether the run evaluates after `done` steps: every eval_every steps, at the last step, and at the
        log-spaced steps."""
        return done % self.eval_every == 0 or done == self.steps or done in log_spaced_steps(self.steps,
                                                                                             self.eval_log_points)

    def eval_steps(self) -> list[int]:
        """Every step the run evaluates after, in order."""
        return sorted(set(range(self.eval_every, self.steps + 1, self.eval_every)) | {self.steps}
                      | log_spaced_steps(self.steps, self.eval_log_points))

    def anneal_horizons(self) -> list[tuple[int, int]]:
        """The cooldown branches of a WSD run, (horizon, start) from the shortest: a branch is the run of `horizon`
        steps (steps / 2^k, k = anneal_branches .. 1) with this schedule, taken off the run's stable phase at step
        `start`, where that run's cooldown begins; the stable phase is shared, so the branch is that shorter run
        (same batches, same learning rate at every step). The run itself is the longest horizon, not listed."""
        out = []
        for k in range(self.anneal_branches, 0, -1):
            horizon = round(self.steps / 2 ** k)
            out.append((horizon, math.floor((1 - self.decay_fraction) * horizon)))
        return out

    def branch_steps(self) -> int:
        """The optimizer steps the cooldown branches add to the run's own."""
        return sum(horizon - start for horizon, start in self.anneal_horizons())


@functools.lru_cache(maxsize=64)
def log_spaced_steps(steps: int, points: int) -> frozenset[int]:
    """points steps spaced evenly in log(step) from 1 to steps (fewer where small steps coincide)."""
    if points <= 0:
        return frozenset()
    if points == 1:
        return frozenset({steps})
    return frozenset(round(steps ** (i / (points - 1))) for i in range(points))


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """How one run is spread over the devices (see jscale.sharding). Vmapped sweep groups put their members on
    an ensemble axis instead and ignore fsdp and tensor."""

    data: int = -1  # data-parallel ways; -1 = the devices left over
    fsdp: int = 1  # parameter/optimizer-state sharding ways
    tensor: int = 1  # tensor-parallel ways


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go besides metrics.jsonl / the results database (jscale.tracking). Changes nothing a run
    computes, so it is not part of a run's identity."""
    tensorboard: bool = True  # TensorBoard event files: RUN/tb for one run, OUT/tb/NAME [RUN_ID] per sweep member
    wandb: bool = False  # Weights & Biases, one W&B run per jscale run (pip install 'jscale[wandb]')
    wandb_project: str = "jscale"  # W&B project
    wandb_entity: str = ""  # W&B entity (team or user); "" = the logged-in default
    wandb_mode: str = "online"  # online | offline (upload later with `wandb sync`) | disabled
    every: int = 10  # training scalars (loss, grad norm, lr, tokens/s, MFU) every this many steps; 0 = at evaluations


# Keys that may differ between members of one vmapped ensemble: they are arrays in train_step's hparams, or only
# change which tokens a member's batches are drawn from.
MEMBER_KEYS = {("train", "lr"), ("train", "warmup_steps"), ("train", "final_lr_fraction"), ("train", "b1"),
               ("train", "b2"), ("train", "eps"), ("train", "schedule"), ("train", "decay_fraction"),
               ("train", "weight_decay"), ("train", "grad_clip"), ("train", "seed"), ("train", "data_seed"),
               ("data", "max_train_tokens"), ("data", "subset_seed"), ("data", "subset_chunk")}


# Keys added after results were first recorded, with the value that reproduces the behaviour from before: a run
# that leaves them at it keeps the identity (run id, run directory) it had before they existed.
NEUTRAL_LATER_KEYS = {"data.download": True, "data.hf_name": "", "data.text_column": "", "model.init_from": "",
                      "train.eval_log_points": 0, "train.anneal_branches": 0, "data.eval_se": 0.0,
                      "data.curve_eval_se": 0.0}
IDENTITY_SECTIONS = ("model", "data", "train", "parallel")  # what a run computes (logging is not)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    logging: LoggingConfig = LoggingConfig()

    def identity(self) -> dict[str, dict[str, Any]]:
        """The keys that decide what a run computes: its run id hashes them and a run directory is resumed only
        with the same ones."""
        whole = self.to_dict()
        out = {s: dict(whole[s]) for s in IDENTITY_SECTIONS}
        for dotted, neutral in NEUTRAL_LATER_KEYS.items():
            section, key = dotted.split(".")
            if out[section].get(key) == neutral:
                del out[section][key]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "parallel": ParallelConfig,
            "logging": LoggingConfig}


def shared_config(cfg: Config) -> dict[str, Any]:
    """What runs of one ensemble share, and what their compiled steps depend on: the config less MEMBER_KEYS, with
    model sizes left to their defaults written out (d_ff None and d_ff = 4 d_model are one shape)."""
    d = cfg.to_dict()
    for section, key in MEMBER_KEYS:
        if cfg.train.anneal_branches and (section, key) in (("train", "schedule"), ("train", "decay_fraction")):
            continue  # the members of a group branch at the same steps: their cooldowns must agree
        d[section].pop(key)
    m = cfg.model
    d["model"].update(d_ff=m.d_ff_, d_attn=m.d_attn_, n_kv_heads=m.n_kv_heads_)
    return d


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Return value coerced to the annotated type, or raise ConfigError naming the key."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """' (did you mean X?)' for the closest of choices, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def describe_keys() -> list[tuple[str, str, str, str]]:
    """Every config key: (section.key, type, default, the comment beside its field in this file). One source:
    the descriptions are the fields' own comments."""
    import inspect

    rows = []
    for section, cls in SECTIONS.items():
        comments = {}
        for line in inspect.getsource(cls).splitlines():
            head, _, comment = line.partition("  # ")
            name = head.strip().split(":")[0]
            if name and ":" in head:
                comments[name] = comment.strip()
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            kind = " or ".join("none" if t is type(None) else t.__name__ for t in
                               (typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)))
            rows.append((f"{section}.{f.name}", kind, repr(f.default), comments.get(f.name, "")))
    return rows


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and wrong types."""
    sections = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown config section (expected one of {', '.join(SECTIONS)})"
                              f"{did_you_mean(name, SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table of keys, got {value!r}")
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        fields = {}
        for key, v in value.items():
            if key not in hints:
                raise ConfigError(f"{name}.{key}: unknown config key{did_you_mean(key, hints, name + '.')}")
            fields[key] = _check_type(f"{name}.{key}", v, hints[key])
        sections[name] = cls(**fields)
    return Config(**sections)


def parse_override(item: str) -> tuple[str, Any]:
    """Parse `section.key=value`; the value is read as TOML (numbers, booleans, quoted strings) or a bare string."""
    if "=" not in item:
        raise ConfigError(f"{item}: an override must look like section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"{key}: an override key must be section.key, e.g. model.d_model")
        section, name = parts
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a table of keys")
        raw[section][name] = value
    return raw


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict, or a one-line ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def _positive(cfg: Config, keys: list[str]) -> None:
    for key in keys:
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v is not None and v <= 0:
            raise ConfigError(f"{key}: must be positive, got {v}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def validate(cfg: Config) -> None:
    m, d, t = cfg.model, cfg.data, cfg.train
    _choice("model.kind", m.kind, MODEL_KINDS)
    _choice("model.dtype", m.dtype, ("auto", "float32", "bfloat16"))
    _choice("model.attention", m.attention, ("auto", "xla", "cudnn", "einsum"))
    _choice("model.lstm_impl", m.lstm_impl, ("scan", "cudnn"))
    if m.lstm_impl == "cudnn" and m.dropout > 0:
        raise ConfigError("model.lstm_impl: cuDNN's LSTM path has no dropout between layers here; use scan")
    fixed_vocab = d.tokenizer.startswith(("file:", "tiktoken:")) or d.tokenizer == "gpt2"
    if not fixed_vocab:
        _choice("data.tokenizer", d.tokenizer, ("bytes", "bpe", "gpt2", "tiktoken:NAME", "file:PATH"))
    elif d.vocab_size != DataConfig.vocab_size:
        raise ConfigError(f"data.vocab_size: {d.tokenizer} has its own vocabulary; leave data.vocab_size out")
    _positive(cfg, ["model.n_layer", "model.d_model", "model.n_heads", "model.d_ff", "model.d_attn",
                    "model.n_ctx", "model.vocab_size", "data.eval_tokens", "train.batch_size", "train.steps",
                    "train.lr", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints"])
    _positive(cfg, ["model.n_kv_heads"])
    if t.eval_log_points < 0:
        raise ConfigError(f"train.eval_log_points: must be >= 0, got {t.eval_log_points}")
    if m.reuse < 1:
        raise ConfigError(f"model.reuse: must be >= 1, got {m.reuse}")
    for key in ("mem_len", "eval_mem_len"):
        if getattr(m, key) is not None and getattr(m, key) < 0:
            raise ConfigError(f"model.{key}: must be >= 0, got {getattr(m, key)}")
    defaults = ModelConfig()
    for key, kinds in KIND_ONLY_KEYS.items():
        if m.kind not in kinds and getattr(m, key) != getattr(defaults, key):
            raise ConfigError(f"model.{key}: a {m.kind} model does not use it (only {', '.join(kinds)}); "
                              f"leave it out")
    if m.kind != "lstm":
        if m.d_attn_ % m.n_heads:
            raise ConfigError(f"model.n_heads: d_attn = {m.d_attn_} is not divisible by n_heads = {m.n_heads}")
        if m.n_heads % m.n_kv_heads_:
            raise ConfigError(f"model.n_kv_heads: n_heads = {m.n_heads} is not divisible by n_kv_heads = "
                              f"{m.n_kv_heads_}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if d.tokenizer == "bytes" and d.vocab_size != DataConfig.vocab_size and not d.corpus.startswith("bin:"):
        raise ConfigError("data.vocab_size: the bytes tokenizer always has 256 tokens; set data.tokenizer = "
                          "\"bpe\" to choose a vocabulary size, or leave it out")
    _choice("data.bin_dtype", d.bin_dtype, ("uint8", "uint16", "uint32"))
    _choice("logging.wandb_mode", cfg.logging.wandb_mode, ("online", "offline", "disabled"))
    if cfg.logging.every < 0:
        raise ConfigError(f"logging.every: must be >= 0 (0 = only at evaluations), got {cfg.logging.every}")
    if m.init_from and not m.init_from.startswith("hf:"):
        raise ConfigError(f"model.init_from: {m.init_from!r} is not hf:DIR (a GPT-2 directory)")
    if m.init_from and m.kind != "transformer":
        raise ConfigError(f"model.init_from: GPT-2 weights start a transformer, not a {m.kind}")
    if d.bin_dtype != DataConfig.bin_dtype and not d.corpus.startswith("bin:"):
        raise ConfigError(f"data.bin_dtype: only read for a bin: corpus (data.corpus = {d.corpus!r})")
    for key in ("validation", "test", "extra_eval"):
        if getattr(d, key) and d.corpus.startswith(("builtin:", "tfds:", "bin:")):
            raise ConfigError(f"data.{key}: names files of a local corpus; {d.corpus} has its own splits")
    if d.tfds_data_dir and not d.corpus.startswith("tfds:"):
        raise ConfigError(f"data.tfds_data_dir: only read for a tfds: corpus (data.corpus = {d.corpus!r})")
    if d.hf_name and not d.corpus.startswith("hf:"):
        raise ConfigError(f"data.hf_name: only read for an hf: corpus (data.corpus = {d.corpus!r})")
    if d.text_column and not d.corpus.startswith(("hf:", "tfds:")):
        raise ConfigError(f"data.text_column: only read for an hf: or tfds: corpus (data.corpus = {d.corpus!r})")
    if d.tokenizer == "bpe" and not 257 <= d.vocab_size <= 2**20:
        raise ConfigError(f"data.vocab_size: a BPE vocabulary needs 257 to 1048576 entries, got {d.vocab_size}")
    for key in ("eval_windows", "curve_eval_windows"):
        if getattr(d, key) < 0:
            zero = "from data.eval_tokens" if key == "eval_windows" else "all"
            raise ConfigError(f"data.{key}: must be >= 0 (0 = {zero}), got {getattr(d, key)}")
    for key in PILOT_SIZED:
        if not (math.isfinite(getattr(d, key)) and getattr(d, key) >= 0):
            raise ConfigError(f"data.{key}: must be a standard error in nats >= 0 (0 = off), got {getattr(d, key)}")
    for key in ("validation_fraction", "test_fraction"):
        if not 0 < getattr(d, key) < 1:
            raise ConfigError(f"data.{key}: must be in (0, 1), got {getattr(d, key)}")
    if d.validation_fraction + d.test_fraction >= 0.5:
        raise ConfigError(f"data.validation_fraction: with data.test_fraction it holds out "
                          f"{d.validation_fraction + d.test_fraction:g} of the corpus; keep the two under 0.5")
    if d.subset_chunk < 1:
        raise ConfigError(f"data.subset_chunk: must be positive, got {d.subset_chunk}")
    if not 0 <= d.subset_seed < 2**32:
        raise ConfigError(f"data.subset_seed: must be in [0, 2^32), got {d.subset_seed}")
    if d.max_train_tokens < 0:
        raise ConfigError(f"data.max_train_tokens: must be >= 0 (0 = all), got {d.max_train_tokens}")
    if 0 < d.max_train_tokens <= m.n_ctx:
        raise ConfigError(f"data.max_train_tokens: {d.max_train_tokens} tokens cannot hold one window of "
                          f"model.n_ctx + 1 = {m.n_ctx + 1}")
    _choice("train.schedule", t.schedule, ("cosine", "wsd", "constant"))
    if not 0 < t.decay_fraction <= 1:
        raise ConfigError(f"train.decay_fraction: must be in (0, 1], got {t.decay_fraction}")
    if t.anneal_branches < 0:
        raise ConfigError(f"train.anneal_branches: must be >= 0, got {t.anneal_branches}")
    if t.anneal_branches and t.schedule != "wsd":
        raise ConfigError(f"train.anneal_branches: cooldown branches need train.schedule = \"wsd\" (a stable phase "
                          f"to branch off), not {t.schedule!r}")
    for horizon, start in t.anneal_horizons():  # (a branch may start where warmup ends: WSD with no stable phase)
        if start < t.warmup_steps or horizon <= start:
            where = f"inside the warmup of {t.warmup_steps} steps" if start < t.warmup_steps else "with no cooldown"
            raise ConfigError(f"train.anneal_branches: the branch of {horizon} steps would start at step {start}, "
                              f"{where}; "
                              f"use fewer branches ({t.anneal_branches} asked), more steps or a shorter warmup")
    if t.warmup_tokens < 0 or t.warmup_per_param < 0:
        key = "warmup_tokens" if t.warmup_tokens < 0 else "warmup_per_param"
        raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if not 0 <= t.warmup_steps <= t.steps:
        raise ConfigError(f"train.warmup_steps: must be in [0, train.steps = {t.steps}], got {t.warmup_steps}")
    if not 0 <= t.final_lr_fraction <= 1:
        raise ConfigError(f"train.final_lr_fraction: must be in [0, 1], got {t.final_lr_fraction}")
    for key in ("weight_decay", "grad_clip"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if t.eps <= 0:
        raise ConfigError(f"train.eps: must be positive (Adam divides by sqrt(v) + eps), got {t.eps}")
    for key in ("seed", "data_seed"):
        v = getattr(t, key)
        if v is not None and not 0 <= v < 2**32:
            raise ConfigError(f"train.{key}: must be in [0, 2^32), got {v}")
    p = cfg.parallel
    if p.data < 1 and p.data != -1:
        raise ConfigError(f"parallel.data: must be positive or -1 (the devices left over), got {p.data}")
    _positive(cfg, ["parallel.fsdp", "parallel.tensor"])
    for key in ("b1", "b2"):
        if not 0 <= getattr(t, key) < 1:
            raise ConfigError(f"train.{key}: must be in [0, 1), got {getattr(t, key)}")
