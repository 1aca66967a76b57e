"""Corpora, tokenizers, token caches and batches as pure functions of (seed, step)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jscale import data
from jscale.config import ConfigError, DataConfig


def test_builtin_corpus_is_large_deterministic_and_split_by_name(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path))
    corpus = data.corpus_from_config(cfg)
    train, test = corpus.names("train"), corpus.names("test")
    assert train == sorted(train) and test == sorted(test)  # deterministic path order
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(corpus.files)
    assert 0.02 < len(test) / len(corpus.files) < 0.09  # test_fraction 0.05
    # The same file always lands in the same split, whatever else the corpus holds.
    assert all(data._hash_fraction(n) < 0.05 for n in test)
    tokens = data.prepare(cfg)
    assert len(tokens.train) >= 10_000_000
    assert tokens.meta["train_documents"] == len(train)
    # Byte tokens are the UTF-8 bytes of the documents, in order.
    first = next(corpus.documents("train")).encode()
    np.testing.assert_array_equal(tokens.train[:len(first)], np.frombuffer(first, np.uint8))


def test_token_cache_is_reused(tmp_path, text_corpus):
    cfg = DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path))
    a = data.prepare(cfg)
    files = list(tmp_path.glob("*/train.bin"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    b = data.prepare(cfg)
    assert files[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(a.train, b.train)
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind


def test_local_files_globs_and_directories_agree(tmp_path, text_corpus):
    by_dir = data.prepare(DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path)))
    by_glob = data.prepare(DataConfig(corpus=str(text_corpus / "*.txt"), cache_dir=str(tmp_path)))
    np.testing.assert_array_equal(by_dir.train, by_glob.train)
    assert by_dir.meta["train_documents"] + by_dir.meta["test_documents"] == 30
    single = data.prepare(DataConfig(corpus=str(text_corpus / "doc00.txt"), cache_dir=str(tmp_path)))
    # One file is split into ~64 kB chunks so a share of it can be held out.
    assert single.meta["train_documents"] >= 1 and len(single.train) + len(single.test) > 0
    with pytest.raises(ConfigError, match="data.corpus: no files match"):
        data.prepare(DataConfig(corpus=str(tmp_path / "missing*.txt"), cache_dir=str(tmp_path)))


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(10_000) % 251
    a = data.train_batch(tokens, seed=3, step=17, batch_size=8, n_ctx=32)
    b = data.train_batch(tokens, seed=3, step=17, batch_size=8, n_ctx=32)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 33) and a.dtype == np.int32
    assert not np.array_equal(a, data.train_batch(tokens, seed=3, step=18, batch_size=8, n_ctx=32))
    assert not np.array_equal(a, data.train_batch(tokens, seed=4, step=17, batch_size=8, n_ctx=32))
    # Windows are contiguous slices of the token stream.
    assert np.all(np.diff(a.astype(np.int64), axis=1) % 251 == 1)


def test_consecutive_batches_continue_each_rows_stream():
    """Transformer-XL's batches: row b at step k + 1 starts where its step-k window ended."""
    tokens = np.arange(100_000, dtype=np.int64)
    a = data.train_batch(tokens, 5, 10, 4, 16, consecutive=True)
    b = data.train_batch(tokens, 5, 11, 4, 16, consecutive=True)
    np.testing.assert_array_equal(b[:, 0], a[:, -1])  # the last target of step k is the first input of k + 1
    np.testing.assert_array_equal(a, data.train_batch(tokens, 5, 10, 4, 16, consecutive=True))
    assert len(set(a[:, 0])) == 4  # each row reads its own stream
    assert not np.array_equal(a, data.train_batch(tokens, 6, 10, 4, 16, consecutive=True))
    limited = np.concatenate([data.train_batch(tokens, 0, s, 4, 8, 300, consecutive=True) for s in range(100)])
    assert limited.max() < 300  # streams wrap within the first D tokens


def test_max_train_tokens_limits_the_windows_to_the_first_D_tokens():
    tokens = np.arange(100_000, dtype=np.int64)
    seen = np.concatenate([data.train_batch(tokens, 0, s, 16, 8, max_train_tokens=500) for s in range(200)])
    assert seen.max() == 499 and seen.min() == 0  # all of the first D tokens are reachable, none beyond


def test_eval_windows_are_fixed_and_spread_over_the_test_split():
    tokens = np.arange(5_000, dtype=np.int64)
    w = data.eval_windows(tokens, 10, 16)
    np.testing.assert_array_equal(w, data.eval_windows(tokens, 10, 16))
    assert w[0, 0] == 0 and w[-1, -1] == 4_999


def test_bpe_tokenizer_is_trained_cached_and_round_trips(tmp_path, text_corpus):
    cfg = DataConfig(corpus=str(text_corpus), tokenizer="bpe", vocab_size=300, cache_dir=str(tmp_path))
    tokens = data.prepare(cfg)
    assert tokens.meta["vocab_size"] == 300 and tokens.train.dtype == np.uint16
    assert tokens.train.max() < 300
    assert len(tokens.train) < tokens.meta["train_bytes"] / 1.5  # merges compress the text
    assert tokens.test_bytes_per_token > 1.5
    saved = list(tmp_path.glob("*-bpe300.json"))
    assert len(saved) == 1
    tok = data.BPETokenizer.train_or_load(data.corpus_from_config(cfg), 300, tmp_path)
    text = "the model loss falls as a power law"
    assert tok.decode(tok.encode(text)) == text


TFDS_BUILDER = '''
import sys
import numpy as np
import tensorflow_datasets as tfds

class TinyStories(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "id": tfds.features.Scalar(dtype=np.int64)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(200, 0), "test": self._generate_examples(20, 1000)}

    def _generate_examples(self, n, offset):
        for i in range(n):
            yield i, {"text": f"story {i + offset}: once upon a time the loss fell. " * 5, "id": i + offset}

TinyStories(data_dir=sys.argv[1], file_format="array_record").download_and_prepare()
'''


def test_tfds_corpus_read_through_data_source_without_the_builder(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    builder = tmp_path / "builder" / "make_tiny.py"
    builder.parent.mkdir()
    builder.write_text(TFDS_BUILDER)
    data_dir = tmp_path / "tfds"
    subprocess.run([sys.executable, str(builder), str(data_dir)], check=True, capture_output=True)
    # A fresh process that has never seen the builder class reads the prepared ArrayRecord files.
    code = ("import json, sys; from jscale import data, config; "
            "c = data.prepare(config.DataConfig(corpus='tfds:tiny_stories', tfds_data_dir=sys.argv[1], "
            "cache_dir=sys.argv[2])); print(json.dumps(c.meta)); "
            "print(bytes(c.test[:60]).decode()); print('tensorflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(data_dir), str(tmp_path / "cache")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout.splitlines()[0])
    assert meta["train_documents"] == 200 and meta["test_documents"] == 20
    assert "story 10" in r.stdout.splitlines()[1]  # the test split is TFDS's own test split
    assert r.stdout.splitlines()[-1] == "False"  # read without importing TensorFlow


def test_n_ctx_longer_than_the_data_is_a_config_error(tmp_path, text_corpus):
    tokens = data.prepare(DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="model.n_ctx: 100000000 is longer than the"):
        tokens.check_fits(100_000_000, 0, 8)
