"""Configs: typed TOML with overrides; every bad input is one line naming the key, exit status 2, nothing run."""


import functools

import pytest

from conftest import REPO
from jscale import config, resolve
from jscale.config import ConfigError


def test_toml_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nn_layer = 3\nd_model = 96\nn_heads = 3\n[data]\ntokenizer = "bpe"\nvocab_size = 512\n')
    cfg = resolve.load(p, ["model.d_model=48", "train.lr=3e-4", "data.corpus=some/file.txt", "model.d_ff=100"])
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.d_ff_, cfg.model.d_attn_) == (3, 48, 100, 48)
    assert cfg.train.lr == 3e-4 and cfg.data.corpus == "some/file.txt"
    assert cfg.model.vocab_size == 512  # from the tokenizer
    assert resolve.load(None, ["data.tokenizer=bytes"]).model.vocab_size == 256


@pytest.mark.parametrize("overrides, message", [
    (["model.d_modle=64"], "model.d_modle: unknown config key"),
    (["modle.d_model=64"], "modle: unknown config section"),
    (["model.n_layer='2'"], "model.n_layer: expected int, got '2'"),
    (["model.tie_embeddings=1"], "model.tie_embeddings: expected bool, got 1"),
    (["model.d_model=100", "model.n_heads=3"], "model.n_heads: d_attn = 100 is not divisible by n_heads = 3"),
    (["model.n_layer=0"], "model.n_layer: must be positive, got 0"),
    (["model.d_ff=-4"], "model.d_ff: must be positive, got -4"),
    (["train.lr=-1e-3"], "train.lr: must be positive"),
    (["model.kind=rnn"], "model.kind: 'rnn' is not one of transformer"),
    (["model.dropout=1.5"], "model.dropout: must be in [0, 1)"),
    (["train.warmup_steps=5000", "train.steps=100"], "train.warmup_steps: must be in [0, train.steps = 100]"),
    (["data.tokenizer=bpe", "data.vocab_size=100"], "data.vocab_size: a BPE vocabulary needs 257"),
    (["data.max_train_tokens=64"], "data.max_train_tokens: 64 tokens cannot hold one window"),
    (["data.eval_se=-0.01"], "data.eval_se: must be a standard error in nats >= 0"),
    (["data.curve_eval_se=nan"], "data.curve_eval_se: must be a finite number"),
    (["model.n_layer"], "model.n_layer: an override must look like section.key=value"),
    (["n_layer=2"], "n_layer: an override key must be section.key"),
])
def test_bad_config_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        resolve.load(None, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_reports_config_errors_in_one_line_and_exits_2(tmp_path, jscale_here):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nd_model = 100\nn_heads = 3\n")
    for cmd in (["train", str(p), "--out", str(tmp_path / "run")], ["info", str(p)]):
        r = jscale_here(*cmd)
        assert r.returncode == 2
        assert r.stderr.strip() == "jscale: error: model.n_heads: d_attn = 100 is not divisible by n_heads = 3"
    assert not (tmp_path / "run").exists()  # nothing was written
    r = jscale_here("train", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "missing.toml: config file not found" in r.stderr
    p.write_text("[model\n")
    r = jscale_here("info", str(p))
    assert r.returncode == 2 and "not valid TOML" in r.stderr and r.stderr.count("\n") == 1


def test_cli_n_ctx_longer_than_the_data(tmp_path, text_corpus, jscale_here):
    p = tmp_path / "c.toml"
    p.write_text(f'[model]\nn_ctx = 200000\n[data]\ncorpus = "{text_corpus / "doc00.txt"}"\n')
    r = jscale_here("train", str(p), "--out", str(tmp_path / "run"), check=2)
    assert r.stderr.startswith("jscale: error: model.n_ctx: 200000 is longer than the") and r.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cli_info_prints_the_counts(repo, jscale_here):
    r = jscale_here("info", str(repo / "experiments" / "train_small.toml"), check=0)
    assert "N (non-embedding)             393,216" in r.stdout
    assert "N_total (all parameters)      445,952" in r.stdout
    assert "train FLOPs per token, 6N     2,359,296" in r.stdout


# A non-default value for every model key, valid on its own (a universal model's base reuses its blocks twice, so
# its step embedding has something to embed).
ALTERNATIVES = {"n_layer": 3, "d_model": 48, "n_heads": 8, "n_kv_heads": 1, "reuse": 3, "step_embedding": False,
                "lstm_impl": "cudnn", "mem_len": 8, "eval_mem_len": 32, "d_ff": 64, "d_attn": 64, "n_ctx": 24,
                "vocab_size": 1000, "dropout": 0.1, "tie_embeddings": False, "dtype": "bfloat16",
                "attention": "cudnn"}
KIND_BASE = {"transformer": {"n_heads": 2}, "universal": {"n_heads": 2, "reuse": 2}, "lstm": {},
             "transformer_xl": {"n_heads": 2, "mem_len": 16}}


def _fingerprint(cfg):
    return _model_fingerprint(cfg.model)


@functools.lru_cache  # (each kind's reference model is fingerprinted once, not once per key)
def _model_fingerprint(model_cfg):
    """What a model setting can change: parameter shapes, the traced forward pass (training mode, so dropout
    shows), and the context a Transformer-XL evaluation reads. A trace that fails counts as a change (cuDNN
    paths cannot be traced on a CPU)."""
    import jax
    import jax.numpy as jnp

    from jscale import train
    from jscale.models import build

    model = build(model_cfg)
    tokens = jnp.zeros((1, model_cfg.n_ctx), jnp.int32)
    try:
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))
        rngs = {"dropout": jax.random.key(1)}
        jaxpr = jax.make_jaxpr(lambda p: model.apply(p, tokens, deterministic=False, rngs=rngs))(params)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        return ("trace failed", type(e).__name__)
    shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), params)
    return (str(shapes), str(jaxpr), train.eval_context(model_cfg))


@pytest.mark.parametrize("kind", config.MODEL_KINDS)
@pytest.mark.parametrize("key", sorted(ALTERNATIVES))
def test_every_model_key_is_used_or_refused_by_every_kind(kind, key):
    base = {"model": {"kind": kind, "n_layer": 2, "d_model": 32, "n_ctx": 16, **KIND_BASE[kind]}}
    reference = resolve.resolve(config.from_dict(base))
    changed = {"model": {**base["model"], key: ALTERNATIVES[key]}}
    try:
        cfg = resolve.resolve(config.from_dict(changed))
    except ConfigError as e:
        assert str(e).startswith(f"model.{key}:"), e
        return
    assert _fingerprint(cfg) != _fingerprint(reference), f"model.{key} is accepted but ignored by a {kind} model"


def test_every_config_key_is_described_and_typos_get_a_suggestion(capsys):
    from jscale import cli

    rows = config.describe_keys()
    assert all(text for _, _, _, text in rows), [k for k, _, _, t in rows if not t]
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == len(rows) and "data.eval_tokens" in out
    # aligned: every row's description starts in the same column, with a file's values too (wider than defaults)
    for argv in (["config"], ["config", str(REPO / "experiments" / "train_small.toml"), "data.corpus=builtin:stdlib"]):
        assert cli.main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        starts = {line.index(text) for line, (_, _, _, text) in zip(lines, rows)}
        assert len(starts) == 1, starts
    with pytest.raises(config.ConfigError, match=r"model.d_modle: unknown config key \(did you mean model.d_model\?\)"):
        resolve.load(None, ["model.d_modle=64"])
