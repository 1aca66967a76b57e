"""Using a trained model: load it from a run or a sweep member, sample, evaluate on any corpus, export to GPT-2's
Hugging Face layout (checked by a NumPy GPT-2 written here from its definition) and start a run from that export."""

import json
import math
import sqlite3

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import config, data, grid, hf_gpt2, resolve, sweep, train, trained
from jscale.config import ConfigError
from jscale.models import build

MODEL = {"n_layer": 2, "d_model": 32, "n_heads": 2, "n_ctx": 32}
# The exports the transformers tests load: every model form GPT-2's layout can express.
EXPORT_VARIANTS = [{}, {"tie_embeddings": False}, {"d_ff": 96},
                   {"kind": "universal", "reuse": 2, "step_embedding": False, "tie_embeddings": False}]
EXPORT_VARIANT_IDS = ["tied", "untied", "d_ff 3 d_model", "universal unrolled, untied"]
TRAIN = {"batch_size": 8, "steps": 40, "lr": 3e-3, "warmup_steps": 5, "eval_every": 20, "checkpoint_every": 40}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small GPT trained for 40 steps on the built-in corpus."""
    out = tmp_path_factory.mktemp("use") / "run"
    cfg = resolve.resolve(config.from_dict({"model": MODEL, "data": {"eval_windows": 16}, "train": TRAIN}))
    final = train.train(cfg, out, progress=False)
    return out, final


def greedy_by_full_forward(model, prompt_ids, n):
    """Greedy decoding with no cache: the last n_ctx tokens through the model at every step (padded to n_ctx at the
    end, which a causal model cannot see, so one compiled forward pass serves every length): nanoGPT's loop."""
    net, ids, n_ctx = build(model.cfg.model), list(prompt_ids), model.cfg.model.n_ctx
    forward = jax.jit(lambda params, x: net.apply({"params": params}, x))
    for _ in range(n):
        window = ids[-n_ctx:]
        logits = forward(model.params, jnp.asarray([window + [0] * (n_ctx - len(window))]))
        ids.append(int(jnp.argmax(logits[0, len(window) - 1])))
    return ids[len(prompt_ids):]


def test_greedy_sampling_matches_decoding_without_a_cache(run):
    model = trained.load(run[0])
    assert model.step == 40
    text = trained.sample(model, "def ", n_tokens=12, temperature=0)
    expect = greedy_by_full_forward(model, list(b"def "), 12)
    assert text == bytes(expect).decode("utf-8", errors="replace")
    # past the context (n_ctx 32): each token on the last n_ctx tokens, as nanoGPT crops; a prompt longer than it too
    n_ctx = model.cfg.model.n_ctx
    for prompt, n in (("def ", 3 * n_ctx), ("x = 1\n" * n_ctx, 5)):
        text = trained.sample(model, prompt, n_tokens=n, temperature=0)
        assert text == bytes(greedy_by_full_forward(model, list(prompt.encode()), n)).decode("utf-8", errors="replace")
    # sampling at a temperature is a pure function of the seed
    a, b = (trained.sample(model, "import ", 10, temperature=1.0, top_k=20, seed=s) for s in (1, 1))
    assert a == b


def test_sample_command_prints_the_prompt_and_its_continuation(run, jscale_here):
    r = jscale_here("sample", str(run[0]), "--prompt", "class ", "--tokens", "8", "--temperature", "0", check=0)
    model = trained.load(run[0])
    assert r.stdout == "class " + bytes(greedy_by_full_forward(model, list(b"class "), 8)).decode(
        "utf-8", errors="replace") + "\n"


def test_eval_reproduces_the_runs_final_validation_and_reads_another_corpus(run, text_corpus, tmp_path, jscale_here):
    out, final = run
    model = trained.load(out)
    same = trained.evaluate(model, split="validation")
    assert same["windows"] == 16
    assert same["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert same["se"] == pytest.approx(final["val_se"], rel=1e-4)
    other = trained.evaluate(model, corpus=str(text_corpus), split="test", windows=8)
    assert other["windows"] == 8 and len(other["per_position"]) == 32
    assert other["bits_per_byte"] == pytest.approx(other["loss"] / math.log(2))  # byte tokens
    bins = trained.position_bins(other["per_position"])
    assert [(lo, hi) for lo, hi, _ in bins] == [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 32)]
    r = jscale_here("eval", str(out), "--data", str(text_corpus), "--split", "test", "--windows", "8",
                    "--out", str(tmp_path / "e.json"), check=0)
    assert json.loads((tmp_path / "e.json").read_text())["loss"] == pytest.approx(other["loss"], rel=1e-5)
    assert "loss by position: 1: " in r.stdout


def test_eval_scores_a_file_of_yours_whole_and_the_train_split_on_request(run, tmp_path, jscale_here):
    """`jscale eval RUN --data FILE` scores every token of FILE (not the 5% a hash holds out as its test split):
    checked against the model's own forward pass over the file's tokens, tiled by hand."""
    from scipy.special import log_softmax

    out, _ = run
    model = trained.load(out)
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(60))  # ~2.2 kB, one piece
    (tmp_path / "mine.py").write_text(text)
    r = jscale_here("eval", str(out), "--data", str(tmp_path / "mine.py"), "--out", str(tmp_path / "all.json"), check=0)
    got = json.loads((tmp_path / "all.json").read_text())
    assert got["split"] == "all" and f"on every token of {tmp_path / 'mine.py'}" in r.stdout
    # every split of the file one after another (here the whole file lands in one), tiled every n_ctx tokens
    tokens = data.prepare(trained.eval_data_config(model.cfg, str(tmp_path / "mine.py")))
    n_ctx = model.cfg.model.n_ctx
    net = build(model.cfg.model)
    nll = []
    for split in ("train", "validation", "test"):
        ids = np.asarray(tokens.splits[split], np.int64)
        for start in range(0, len(ids) - n_ctx, n_ctx):
            x = ids[start:start + n_ctx + 1]
            logits = np.asarray(net.apply({"params": model.params}, jnp.asarray(x[None, :-1])), np.float64)[0]
            logp = log_softmax(logits, axis=-1)
            nll.extend(-logp[np.arange(n_ctx), x[1:]])
    # every byte of the file, and the one separator that starts its document
    assert sum(len(tokens.splits[s]) for s in ("train", "validation", "test")) == len(text.encode()) + 1
    assert got["windows"] == len(nll) // n_ctx and got["loss"] == pytest.approx(np.mean(nll), rel=1e-4)
    # the run's own train split, asked for by name
    train_split = trained.evaluate(model, split="train", windows=4)
    assert train_split["split"] == "train" and train_split["windows"] == 4 and np.isfinite(train_split["loss"])
    with pytest.raises(ConfigError, match="--split: .* not 'everything'"):
        trained.evaluate(model, split="everything")


def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_numpy(directory, ids):
    """GPT-2's forward pass (Radford et al. 2019, as in openai/gpt-2's model.py) in NumPy, from the exported
    config.json and model.safetensors alone."""
    from safetensors.numpy import load_file

    hp = json.loads((directory / "config.json").read_text())
    w = {k.removeprefix("transformer."): v.astype(np.float64)
         for k, v in load_file(str(directory / "model.safetensors")).items()}
    H, eps, T = hp["n_head"], hp["layer_norm_epsilon"], len(ids)

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(T)]
    for i in range(hp["n_layer"]):
        p = f"h.{i}."
        q, k, v = np.split(norm(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], 3, axis=-1)
        heads = lambda a: a.reshape(T, H, -1).transpose(1, 0, 2)
        scores = heads(q) @ heads(k).transpose(0, 2, 1) / math.sqrt(q.shape[-1] // H)
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -1e10)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        a = (att @ heads(v)).transpose(1, 0, 2).reshape(T, -1)
        x = x + a @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = gelu_new(norm(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    head = w["wte.weight"] if hp["tie_word_embeddings"] else w["lm_head.weight"]
    return norm(x, "ln_f") @ head.T


def test_export_to_hf_is_gpt2_and_an_import_starts_from_the_same_weights(run, tmp_path, jscale_here):
    out, final = run
    jscale_here("export", str(out), "--to", "hf", str(tmp_path / "hf"), check=0)
    model = trained.load(out)
    ids = np.frombuffer(b"def power_law(n, alpha):\n    ret", np.uint8).astype(np.int64)  # 30 of n_ctx 32
    ours = np.asarray(jax.jit(build(model.cfg.model).apply)({"params": model.params}, jnp.asarray(ids[None])))[0]
    np.testing.assert_allclose(gpt2_numpy(tmp_path / "hf", ids), ours, rtol=1e-4, atol=1e-4)
    # import: the same parameters, bit for bit
    loaded = hf_gpt2.load_params(f"hf:{tmp_path / 'hf'}", model.cfg.model)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    # `jscale import hf` writes the model section; a run from it starts where the export left off
    jscale_here("import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "start.toml"), check=0)
    raw = config.read_toml(tmp_path / "start.toml")
    assert raw["model"]["init_from"] == f"hf:{(tmp_path / 'hf').resolve()}" and raw["model"]["n_layer"] == 2
    raw.update({"data": {"eval_windows": 16},
                "train": {**TRAIN, "steps": 1, "lr": 1e-12, "warmup_steps": 0, "eval_every": 1, "checkpoint_every": 1}})
    first = train.train(resolve.resolve(config.from_dict(raw)), tmp_path / "continued", progress=False)
    assert first["val_loss"] == pytest.approx(final["val_loss"], abs=1e-4)  # not a fresh init's ~5.5 nats


def test_a_sweep_member_is_loaded_from_its_vmapped_group(tmp_path):
    sw = sweep.expand({"name": "t", "base": {"model": MODEL, "data": {"eval_windows": 8},
                                             "train": {**TRAIN, "steps": 20, "checkpoint_every": 20}},
                       "axis": [{"key": "train.lr", "values": [1e-3, 3e-3]}]})
    assert grid.run_sweep(sw, tmp_path / "out", ensemble_size=2, progress=False)["groups"] == 1
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as c:
        rows = c.execute("SELECT run_id, final_val_loss FROM runs").fetchall()
    for run_id, val_loss in rows:
        model = trained.load(tmp_path / "out", run_id)
        assert trained.evaluate(model, split="validation")["loss"] == pytest.approx(val_loss, rel=1e-5)
    with pytest.raises(ConfigError, match="--run: .* is a sweep of 2 runs"):
        trained.load(tmp_path / "out")


@pytest.mark.parametrize("model, message", [
    ({"kind": "lstm", "n_heads": None}, "a lstm model is not a GPT-2"),
    ({"kind": "transformer_xl", "mem_len": 8}, "a transformer_xl model is not a GPT-2"),
    ({"n_kv_heads": 1}, "grouped-query attention"),
    ({"kind": "universal", "reuse": 2}, "step embedding"),
])
def test_export_refuses_what_gpt2_cannot_express(model, message):
    given = {k: v for k, v in {**MODEL, **model}.items() if v is not None}
    m = resolve.resolve(config.from_dict({"model": given})).model
    with pytest.raises(ConfigError, match=message):
        hf_gpt2.hf_config(m)


def test_a_universal_transformer_without_step_embedding_exports_unrolled(tmp_path):
    cfg = resolve.resolve(config.from_dict({"model": {**MODEL, "kind": "universal", "reuse": 2,
                                                      "step_embedding": False}}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    model = trained.TrainedModel(cfg, params, 0, "fresh")
    hf_gpt2.export(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_layer"] == 4
    ids = np.arange(20) % 256
    ours = np.asarray(jax.jit(build(cfg.model).apply)({"params": params}, jnp.asarray(ids[None])))[0]
    np.testing.assert_allclose(gpt2_numpy(tmp_path / "hf", ids), ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", EXPORT_VARIANTS, ids=EXPORT_VARIANT_IDS)
def test_every_exportable_variant_round_trips_with_equal_logits_and_greedy_decoding(tmp_path, variant):
    """Each variant GPT-2 can express, exported and read back by an independent NumPy GPT-2 (and imported): equal
    logits and equal greedy continuations. (An untied export was scrambled: its lm_head written as a transposed
    view, whose raw buffer safetensors stored.)"""
    cfg = resolve.resolve(config.from_dict({"model": {**MODEL, **variant}}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(3), jnp.zeros((1, 32), jnp.int32))["params"]
    model = trained.TrainedModel(cfg, params, 0, "fresh")
    hf_gpt2.export(model, tmp_path / "hf")
    apply = jax.jit(build(cfg.model).apply)
    ids = np.frombuffer(b"import numpy as np", np.uint8).astype(np.int64)
    ours = np.asarray(apply({"params": params}, jnp.asarray(ids[None])))[0]
    theirs = gpt2_numpy(tmp_path / "hf", ids)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    ours_ids, their_ids = list(ids), list(ids)
    for _ in range(8):  # greedy decoding, each side from its own continuation
        ours_ids.append(int(np.asarray(apply({"params": params}, jnp.asarray([ours_ids])))[0, -1].argmax()))
        their_ids.append(int(gpt2_numpy(tmp_path / "hf", np.array(their_ids))[-1].argmax()))
    assert ours_ids == their_ids
    if cfg.model.kind == "transformer":  # the import reads the same parameters back, bit for bit
        loaded = hf_gpt2.load_params(f"hf:{tmp_path / 'hf'}", cfg.model)
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.parametrize("variant", EXPORT_VARIANTS, ids=EXPORT_VARIANT_IDS)
def test_every_exportable_variant_loads_in_transformers_with_equal_logits_and_generate(tmp_path, variant):
    """The export read by `transformers.GPT2LMHeadModel` itself (needs PyTorch: `make test` installs the CPU wheel
    where the machine has it, else this is skipped and the NumPy GPT-2 above stands in): logits equal to jscale's
    (relative 1e-4) and `generate()`'s greedy continuation equal to jscale's greedy decoding."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = resolve.resolve(config.from_dict({"model": {**MODEL, **variant}}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(5), jnp.zeros((1, 32), jnp.int32))["params"]
    hf_gpt2.export(trained.TrainedModel(cfg, params, 0, "fresh"), tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    apply = jax.jit(build(cfg.model).apply)
    ids = np.frombuffer(b"import numpy as np", np.uint8).astype(np.int64)
    ours = np.asarray(apply({"params": params}, jnp.asarray(ids[None])))[0]
    with torch.no_grad():
        theirs = hf(torch.tensor(ids[None])).logits[0].double().numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
    ours_ids = list(ids)
    for _ in range(8):
        ours_ids.append(int(np.asarray(apply({"params": params}, jnp.asarray([ours_ids])))[0, -1].argmax()))
    with torch.no_grad():
        generated = hf.generate(torch.tensor(ids[None]), max_new_tokens=8, do_sample=False, min_new_tokens=8,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert generated[0].tolist() == ours_ids


@pytest.mark.parametrize("field, value", [("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False),
                                          ("add_cross_attention", True)])
def test_an_import_refuses_gpt2_variants_it_would_compute_otherwise(tmp_path, field, value, jscale_here):
    cfg = resolve.resolve(config.from_dict({"model": MODEL}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    hf_gpt2.export(trained.TrainedModel(cfg, params, 0, "fresh"), tmp_path / "hf")
    assert oct((tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    r = jscale_here("import", "hf", str(tmp_path / "hf"), check=2)
    assert r.stderr.strip().count("\n") == 0 and field in r.stderr


def test_an_import_takes_the_tokenizer_beside_the_checkpoint(tmp_path, jscale_here):
    cfg = resolve.resolve(config.from_dict({"model": MODEL}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    hf_gpt2.export(trained.TrainedModel(cfg, params, 0, "fresh"), tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    r = jscale_here("import", "hf", str(tmp_path / "hf"), check=0)
    assert f'tokenizer = "file:{(tmp_path / "hf" / "tokenizer.json").resolve()}"' in r.stdout


def test_an_export_names_only_real_special_tokens_and_carries_a_tokenizer_autotokenizer_reads(tmp_path, text_corpus):
    """bytes: a tokenizer.json whose ids are the bytes, no special token named (V - 1 is an ordinary byte, and
    AutoTokenizer must not invent an <|endoftext|> at id V); a tokenizer file with <|endoftext|>: that token is
    eos and bos, as GPT-2's is."""
    transformers = pytest.importorskip("transformers")
    cfg = resolve.resolve(config.from_dict({"model": MODEL}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    hf_gpt2.export(trained.TrainedModel(cfg, params, 0, "fresh"), tmp_path / "bytes")
    hf = json.loads((tmp_path / "bytes" / "config.json").read_text())
    assert "bos_token_id" not in hf and "eos_token_id" not in hf
    assert json.loads((tmp_path / "bytes" / "generation_config.json").read_text()) == {}
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "bytes"))
    text = "def f(x):\n    return 'ünïcode'\n"
    assert len(tok) == 256 and tok.encode(text) == list(text.encode()) and tok.decode(tok.encode(text)) == text
    # a tokenizer file that has an end-of-text token
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train([str(p) for p in sorted(text_corpus.glob("*.txt"))],
              trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.save(str(tmp_path / "tok.json"))
    cfg = resolve.resolve(config.from_dict({"model": MODEL, "data": {"tokenizer": f"file:{tmp_path / 'tok.json'}"}}))
    params = jax.jit(build(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    hf_gpt2.export(trained.TrainedModel(cfg, params, 0, "fresh"), tmp_path / "file")
    hf = json.loads((tmp_path / "file" / "config.json").read_text())
    assert hf["eos_token_id"] == hf["bos_token_id"] == bpe.token_to_id("<|endoftext|>")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "file"))
    assert len(tok) == cfg.model.vocab_size and tok.eos_token == "<|endoftext|>"
    assert tok.encode("the model loss falls") == bpe.encode("the model loss falls").ids
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "file")).eos_token_id == hf["eos_token_id"]


def test_a_run_directory_keeps_the_tokenizer_it_trained_with(tmp_path, text_corpus):
    cfg = resolve.resolve(config.from_dict({"model": MODEL, "data": {"corpus": str(text_corpus), "tokenizer": "bpe",
                                                                     "vocab_size": 300, "eval_windows": 4,
                                                                     "cache_dir": str(tmp_path / "cache")},
                                            "train": {**TRAIN, "steps": 2, "eval_every": 2, "checkpoint_every": 2,
                                                      "warmup_steps": 1}}))
    train.train(cfg, tmp_path / "run", progress=False)
    kept = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    cached = next((tmp_path / "cache").glob("*-bpe300.json"))
    assert kept == json.loads(cached.read_text())
    cached.unlink()  # a copied run: the corpus's cache is not there
    model = trained.load(tmp_path / "run")
    hf_gpt2.export(model, tmp_path / "hf")  # from the kept copy: the BPE is not trained again
    assert json.loads((tmp_path / "hf" / "tokenizer.json").read_text()) == kept
    assert not list((tmp_path / "cache").glob("*-bpe300.json"))


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sampling_a_run_without_a_checkpoint_is_one_line(tmp_path, jscale_here):
    (tmp_path / "empty").mkdir()
    cfg = resolve.resolve(config.from_dict({"model": MODEL}))
    (tmp_path / "empty" / "config.json").write_text(json.dumps(cfg.to_dict()))
    r = jscale_here("sample", str(tmp_path / "empty"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no checkpoint to load" in r.stderr
