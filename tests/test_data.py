"""Corpora, tokenizers, token caches and batches as pure functions of (seed, step)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jscale import data
from jscale.config import ConfigError, DataConfig


def test_builtin_corpus_splits_are_disjoint_representative_and_keep_prose_out(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path))
    corpus = data.corpus_from_config(cfg)
    docs = list(corpus._named_documents())
    names = [n for n, _, _ in docs]
    assert len(names) == len(set(names))  # each piece of each file is in exactly one split
    by_split = {s: [(n, t) for n, split, t in docs if split == s]
                for s in ("train", "validation", "test", "prose", "notes")}
    sizes = {s: sum(len(t.encode()) for _, t in d) for s, d in by_split.items()}
    total = sum(sizes[s] for s in ("train", "validation", "test"))
    for s in ("validation", "test"):
        assert 0.04 < sizes[s] / total < 0.06  # fractions 0.05
        files = {n.split("#")[0] for n, _ in by_split[s]}
        assert len(files) > 50  # a mix of the library, not a few modules
    for s in ("train", "validation", "test"):
        per_file = {}
        for n, t in by_split[s]:
            per_file[n.split("#")[0]] = per_file.get(n.split("#")[0], 0) + len(t.encode())
        assert max(per_file.values()) <= 0.05 * sizes[s], s  # no file dominates a split
    # The English prose is in no training, validation or test piece: it is the extra set `prose`.
    prose_files = {n.split("#")[0] for n, _ in by_split["prose"]}
    assert "pydoc_data/topics.py" in prose_files
    assert not prose_files & {n.split("#")[0] for s in ("train", "validation", "test") for n, _ in by_split[s]}
    assert all(data.prose_share(t) >= data.PROSE_SHARE or n.startswith("pydoc_data/") for n, t in by_split["prose"])
    # the possessive regex finds the spans a backtracking one does (the prose files, and every 20th piece)
    import re

    from jscale.data import sources

    backtracking = re.compile(sources._ENGLISH_RUN.pattern.replace("++", "+"))
    assert backtracking.pattern != sources._ENGLISH_RUN.pattern
    for _, text in by_split["prose"][:40] + by_split["train"][::20]:
        spans = [m.span() for m in sources._ENGLISH_RUN.finditer(text)]
        assert spans == [m.span() for m in backtracking.finditer(text)]
    # Pieces land by a hash of their name: the same piece in the same split whatever else the corpus holds.
    assert all(data.split_by_hash(n, 0.05, 0.05) == "test" for n, _ in by_split["test"])
    # Two held-out distributions of English, neither more than half one file (pydoc's topics.py is read only as far
    # as the rest of the prose holds; it was 97% of it).
    for extra in ("prose", "notes"):
        per_file = {}
        for n, t in by_split[extra]:
            per_file[n] = per_file.get(n, 0) + len(t.encode())
        assert len(per_file) >= 3 and max(per_file.values()) <= 0.5 * sum(per_file.values()), extra
    assert "idlelib/NEWS.txt" in dict(by_split["notes"]) and sizes["notes"] > 100_000
    tokens = data.prepare(cfg)
    assert tokens.eval_sets == ("validation", "test", "prose", "notes")
    assert tokens.meta["prose_largest_file_share"] <= 0.5 and tokens.meta["notes_largest_file_share"] <= 0.5
    assert len(tokens.train) >= 10_000_000
    assert tokens.meta["validation_documents"] == len(by_split["validation"])
    # Byte tokens are the UTF-8 bytes of the documents, in order, each followed by a separator.
    first = by_split["test"][0][1].encode()
    np.testing.assert_array_equal(tokens.test[:len(first)], np.frombuffer(first, np.uint8))


def test_local_validation_and_test_files_and_extra_sets(tmp_path, text_corpus):
    folder = tmp_path / "wiki"
    folder.mkdir()
    (folder / "wiki.train.raw").write_text((text_corpus / "doc00.txt").read_text() * 3)
    (folder / "wiki.valid.raw").write_text((text_corpus / "doc01.txt").read_text())
    (folder / "wiki.test.raw").write_text((text_corpus / "doc02.txt").read_text())
    (folder / "poems.txt").write_text("roses are red\n" * 500)
    cfg = DataConfig(corpus=str(folder / "wiki.train.raw"), validation=str(folder / "wiki.valid.raw"),
                     test=str(folder / "*.test.raw"), extra_eval=f"poems={folder / 'poems.txt'}",
                     cache_dir=str(tmp_path / "cache"))
    tokens = data.prepare(cfg)
    assert tokens.eval_sets == ("validation", "test", "poems")
    assert bytes(tokens.validation[:-1]).decode() == (text_corpus / "doc01.txt").read_text()
    assert bytes(tokens.test[:-1]).decode() == (text_corpus / "doc02.txt").read_text()
    assert bytes(tokens.splits["poems"][:14]) == b"roses are red\n"
    assert len(tokens.train) == len((folder / "wiki.train.raw").read_bytes()) + tokens.meta["train_documents"]
    with pytest.raises(ConfigError, match="data.validation: no files match"):
        data.prepare(DataConfig(corpus=str(folder / "wiki.train.raw"), validation=str(folder / "missing.raw"),
                                cache_dir=str(tmp_path / "cache")))
    with pytest.raises(ConfigError, match="data.test: .* also named for the validation split"):
        data.corpus_from_config(DataConfig(corpus=str(folder), validation=str(folder / "wiki.valid.raw"),
                                           test=str(folder / "wiki.*.raw")))
    with pytest.raises(ConfigError, match="data.extra_eval: 'poems' is not NAME=FILES"):
        data.corpus_from_config(DataConfig(corpus=str(folder), extra_eval="poems"))


def test_random_subsets_are_nested_spread_and_exact():
    n, chunk = 1_000_000, 4096
    small = data.subset_pieces(n, 30_000, chunk, subset_seed=0)
    large = data.subset_pieces(n, 100_000, chunk, subset_seed=0)
    assert small[:, 1].sum() == 30_000 and large[:, 1].sum() == 100_000
    positions = lambda p: set(np.concatenate([np.arange(s, s + k) for s, k in p]).tolist())
    assert positions(small) <= positions(large)  # nested: D = 1e5 contains D = 3e4
    assert large[:, 0].min() < 0.2 * n and large[:, 0].max() > 0.8 * n  # spread over the whole split, no prefix
    np.testing.assert_array_equal(large, data.subset_pieces(n, 100_000, chunk, subset_seed=0))  # pure
    assert not np.array_equal(large, data.subset_pieces(n, 100_000, chunk, subset_seed=1))
    # Batches draw only from the subset's tokens, and can reach all of them.
    tokens = np.arange(n, dtype=np.int64)
    seen = np.concatenate([data.train_batch(tokens, 0, s, 64, 16, 30_000, subset_chunk=chunk).ravel()
                           for s in range(400)])
    assert set(seen.tolist()) <= positions(small)
    assert len(set(seen.tolist())) > 0.9 * 30_000
    assert set(data.subset_tokens(tokens, 30_000, chunk).tolist()) == positions(small)


def test_evaluation_windows_found_verbatim_in_train_are_left_out():
    rng = np.random.default_rng(0)
    train_tokens = rng.integers(0, 256, 200_000).astype(np.uint8)
    test_tokens = rng.integers(0, 256, 20_000).astype(np.uint8)
    starts = data.window_starts(test_tokens, 50, 99)
    copied = starts[::5]  # a licence header: these windows also occur in the train split
    for i, s in enumerate(copied):
        train_tokens[1000 + 300 * i:1000 + 300 * i + 100] = test_tokens[s:s + 100]
    kept = data.window_starts(test_tokens, 50, 99, exclude=train_tokens)
    assert len(kept) == 50 and len(set(kept.tolist())) == 50
    window = lambda s: bytes(test_tokens[s:s + 100])
    train_bytes = bytes(train_tokens)
    assert not any(window(s) in train_bytes for s in kept)
    # The rolling hash agrees with a direct one on every window.
    h = data.window_hashes(train_tokens[:5000], 100)
    assert len(h) == 4901 and h[123] == data.window_hashes(train_tokens[123:223], 100)[0]
    assert np.array_equal(data.window_hashes(train_tokens[:5000], 100, block=700), h)  # blocks of any size agree
    assert len(set(h.tolist())) == 4901


def test_the_windows_of_every_set_are_chosen_in_one_pass_over_train(monkeypatch):
    """window_starts_many gives each request exactly what window_starts gives it alone (independently: a brute-force
    search of each kept window's bytes in train), with one pass over the train split per window length."""
    from jscale.data import batches

    rng = np.random.default_rng(1)
    train_tokens = rng.integers(0, 256, 300_000).astype(np.uint8)
    sets = [rng.integers(0, 256, n).astype(np.uint8) for n in (20_000, 30_000, 9_000)]
    for i, tokens in enumerate(sets):  # some windows of each set also occur in train
        for j in range(5):
            s = 1_000 * (j + 1)
            train_tokens[50_000 * i + 7_000 * j:50_000 * i + 7_000 * j + 200] = tokens[s:s + 200]
    requests = [(sets[0], 40, 99, 0), (sets[1], 64, 99, 0), (sets[2], 30, 99, 0), (sets[0], 12, 63, 0)]
    alone = [batches.window_starts(t, n, n_ctx, c, exclude=train_tokens) for t, n, n_ctx, c in requests]
    passes = []
    real = batches.window_hashes
    monkeypatch.setattr(batches, "window_hashes",
                        lambda tokens, length, **k: passes.append(len(tokens)) or real(tokens, length, **k))
    together = batches.window_starts_many(requests, train_tokens)
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
    assert sum(n >= 300_000 for n in passes) == 2  # one pass over train per window length (100 and 64), not four
    train_bytes = bytes(train_tokens)
    for (tokens, n, n_ctx, _), kept in zip(requests, together):
        assert len(kept) == n and not any(bytes(tokens[s:s + n_ctx + 1]) in train_bytes for s in kept)


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


def test_evaluation_windows_know_the_document_they_come_from(tmp_path, text_corpus):
    """Each window's block is the document (a 4 kB piece here) holding its first evaluated token, counted
    independently from the documents' own texts; a cache written without document offsets is rebuilt."""
    cfg = DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path))
    corpus = data.prepare(cfg)
    texts = list(data.corpus_from_config(cfg).documents("test"))
    lengths = [len((text + data.DOC_SEPARATOR).encode()) for text in texts]  # bytes: one token per byte
    starts_by_hand = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    np.testing.assert_array_equal(corpus.document_starts("test"), starts_by_hand)
    blocks = corpus.window_blocks(40, 32, split="test")
    window_starts = corpus._window_starts("test", 40, 32, 0)
    for b, start in zip(blocks, window_starts):
        assert starts_by_hand[b] <= start < starts_by_hand[b] + lengths[b]
    assert len(np.unique(blocks)) > 5 and np.all(np.diff(blocks) >= 0)
    # a cache from before document offsets (meta.json without their checksums) is rebuilt, not trusted
    meta_path = next(tmp_path.glob("*/meta.json"))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if not k.endswith("_docs")}))
    rebuilt = data.prepare(cfg)
    assert "sha256_test_docs" in rebuilt.meta
    np.testing.assert_array_equal(rebuilt.window_blocks(40, 32, split="test"), blocks)


def test_local_files_globs_and_directories_agree(tmp_path, text_corpus):
    by_dir = data.prepare(DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path)))
    by_glob = data.prepare(DataConfig(corpus=str(text_corpus / "*.txt"), cache_dir=str(tmp_path)))
    np.testing.assert_array_equal(by_dir.train, by_glob.train)
    # A corpus of few files is dealt to the splits in ~4 kB pieces, so that every split holds some.
    assert min(by_dir.meta[f"{s}_documents"] for s in ("train", "validation", "test")) >= 1
    total = sum(len(p.read_bytes()) for p in text_corpus.glob("*.txt"))
    assert sum(by_dir.meta[f"{s}_bytes"] for s in ("train", "validation", "test")) == total + sum(
        by_dir.meta[f"{s}_documents"] for s in ("train", "validation", "test"))
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
    limited = np.concatenate([data.train_batch(tokens, 0, s, 4, 8, 300, consecutive=True, subset_chunk=64)
                              for s in range(100)])
    assert set(limited.ravel().tolist()) == set(data.subset_tokens(tokens, 300, 64).tolist())  # streams wrap in D


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
            "print(bytes(c.test[:60]).decode()); print('tensorflow' in sys.modules); "
            "print(bytes(c.test).hex())")
    r = subprocess.run([sys.executable, "-c", code, str(data_dir), str(tmp_path / "cache")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout.splitlines()[0])
    assert meta["test_documents"] == 20  # TFDS's own test split
    assert meta["train_documents"] + meta["validation_documents"] == 200  # validation held out of its train split
    assert 0 < meta["validation_documents"] < 30
    assert "story 10" in r.stdout.splitlines()[1]  # the test split is TFDS's own test split
    assert r.stdout.splitlines()[-2] == "False"  # read without importing TensorFlow
    # the tokens of the same text through the file source: every document, each ended by a newline (in the order
    # TFDS stores them, which is not the order they were generated in)
    docs = bytes.fromhex(r.stdout.splitlines()[-1]).decode().split("\n")
    assert docs[-1] == "" and sorted(docs[:-1]) == sorted(f"story {i + 1000}: once upon a time the loss fell. " * 5
                                                          for i in range(20))


def test_n_ctx_longer_than_the_data_is_a_config_error(tmp_path, text_corpus):
    tokens = data.prepare(DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="model.n_ctx: 100000000 is longer than the"):
        tokens.check_fits(100_000_000, 0)


def _tokenizer_file(tmp_path, text_corpus):
    """A real HF tokenizer.json: a byte-level BPE of 300 tokens trained on the test corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(p) for p in sorted(text_corpus.glob("*.txt"))], trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path, tok


def test_a_tokenizer_file_sets_the_vocabulary_and_the_tokens(tmp_path, text_corpus):
    from jscale import config, resolve

    path, tok = _tokenizer_file(tmp_path, text_corpus)
    cfg = resolve.resolve(config.from_dict({"data": {"corpus": str(text_corpus), "tokenizer": f"file:{path}",
                                     "cache_dir": str(tmp_path / "cache")}}))
    assert cfg.model.vocab_size == tok.get_vocab_size() == 300
    tokens = data.prepare(cfg.data)
    corpus = data.corpus_from_config(cfg.data)
    first = next(corpus.documents("train")) + data.DOC_SEPARATOR
    np.testing.assert_array_equal(tokens.train[:len(tok.encode(first).ids)], tok.encode(first).ids)
    with pytest.raises(ConfigError, match="model.vocab_size: follows the tokenizer"):
        resolve.resolve(config.from_dict({"data": {"tokenizer": f"file:{path}"}, "model": {"vocab_size": 512}}))
    (tmp_path / "broken.json").write_text('{"model": ')
    with pytest.raises(ConfigError, match="data.tokenizer: .*broken.json: not a tokenizer.json"):
        resolve.resolve(config.from_dict({"data": {"tokenizer": f"file:{tmp_path / 'broken.json'}"}}))


def test_bin_token_files_give_the_tokens_of_the_same_text_through_the_file_source(tmp_path, text_corpus, capsys):
    from jscale import config, resolve, train

    texts = {s: (text_corpus / f"doc0{i}.txt").read_text() for i, s in enumerate(("train", "valid", "test"))}
    for split, text in texts.items():
        (tmp_path / f"{split}.txt").write_text(text)
    by_file = data.prepare(DataConfig(corpus=str(tmp_path / "train.txt"), validation=str(tmp_path / "valid.txt"),
                                      test=str(tmp_path / "test.txt"), cache_dir=str(tmp_path / "cache")))
    nano = tmp_path / "nano"  # nanoGPT's layout: uint16 train.bin and val.bin (here also test.bin)
    nano.mkdir()
    for split, name in (("train", "train.bin"), ("validation", "val.bin"), ("test", "test.bin")):
        np.asarray(by_file.splits[split], np.uint16).tofile(nano / name)
    (nano / "meta.json").write_text(json.dumps({"vocab_size": 256, "bytes_per_token": 1.0}))
    by_bin = data.prepare(DataConfig(corpus=f"bin:{nano}", cache_dir=str(tmp_path / "cache")))
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(by_bin.splits[split], by_file.splits[split])
    assert by_bin.bytes_per_token("test") == 1.0
    # It trains like any corpus: a few steps through the same batches and evaluation.
    cfg = resolve.resolve(config.from_dict({"model": {"n_layer": 1, "d_model": 16, "n_heads": 2, "n_ctx": 16},
                            "data": {"corpus": f"bin:{nano}", "eval_windows": 4, "cache_dir": str(tmp_path / "cache")},
                            "train": {"batch_size": 4, "steps": 4, "eval_every": 2, "checkpoint_every": 4,
                                      "warmup_steps": 1}}))
    assert cfg.model.vocab_size == 256
    final = train.train(cfg, tmp_path / "run", progress=False)
    assert final["step"] == 4 and np.isfinite(final["val_loss"])
    # Without test.bin, val.bin stays the validation split whole and train.bin's last 1% is held out as test.
    (nano / "test.bin").unlink()
    tail = data.prepare(DataConfig(corpus=f"bin:{nano}", cache_dir=str(tmp_path / "cache")))
    n = max(len(by_file.train) // 100, 1)
    np.testing.assert_array_equal(tail.validation, by_file.validation)
    np.testing.assert_array_equal(tail.test, by_file.train[-n:])
    np.testing.assert_array_equal(tail.train, by_file.train[:-n])
    assert "no test.bin: the test split is the last" in capsys.readouterr().err


def test_nanogpt_meta_pkl_gives_the_vocabulary_and_exact_bits_per_byte(tmp_path):
    """nanoGPT's shakespeare_char layout: meta.pkl with vocab_size and itos; each split's bytes are the UTF-8
    lengths of its tokens' texts, counted (here an independent count over the decoded text)."""
    import pickle

    text = "héllo wörld — ünïcode ok\n" * 40
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    nano = tmp_path / "nano"
    nano.mkdir()
    ids = np.array([stoi[c] for c in text], np.uint16)
    ids[:600].tofile(nano / "train.bin")
    ids[600:].tofile(nano / "val.bin")
    with open(nano / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    cfg = DataConfig(corpus=f"bin:{nano}", cache_dir=str(tmp_path / "cache"))
    tc = data.prepare(cfg)
    assert tc.meta["vocab_size"] == len(chars)
    for split in ("train", "validation", "test"):
        expected = len("".join(chars[i] for i in np.asarray(tc.splits[split])).encode())
        assert tc.meta[f"{split}_bytes"] == expected
    assert tc.bytes_per_token("validation") > 1.0  # the accented letters are two bytes each
    # The scan is kept: a second open reads scan.json and does not rescan the files.
    (scan,) = (tmp_path / "cache").rglob("scan.json")
    record = json.loads(scan.read_text())
    record["bytes"]["validation"] = 12345.0
    scan.write_text(json.dumps(record))
    assert data.prepare(cfg).meta["validation_bytes"] == 12345.0
    # A pickle that would build an object is refused, not run.
    (nano / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": np.int64(3)}))
    with pytest.raises(ConfigError, match="meta.pkl: not nanoGPT's meta.pkl"):
        data.prepare(cfg)


@pytest.mark.parametrize("case, message", [
    ("odd", "is not a whole number of uint16 tokens"),
    ("big_id", "token id 300 is not below the vocabulary size 256"),
    ("no_vocab", "data.vocab_size: give the vocabulary size"),
    ("no_val", "no val.bin or validation.bin"),
])
def test_bad_bin_corpora_are_one_line_errors(tmp_path, case, message):
    from jscale import config, resolve

    nano = tmp_path / "nano"
    nano.mkdir()
    np.arange(200, dtype=np.uint16).tofile(nano / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(nano / "val.bin")
    if case != "no_vocab":
        (nano / "meta.json").write_text('{"vocab_size": 256}')
    if case == "odd":
        (nano / "val.bin").write_bytes(b"\x01\x02\x03")
    if case == "big_id":
        np.array([1, 300], np.uint16).tofile(nano / "val.bin")
    if case == "no_val":
        (nano / "val.bin").unlink()
    with pytest.raises(ConfigError, match=message):
        data.prepare(resolve.resolve(config.from_dict({"data": {"corpus": f"bin:{nano}",
                                                "cache_dir": str(tmp_path / "c")}})).data)


def test_documents_end_with_the_tokenizers_own_end_of_text_token(tmp_path, text_corpus):
    """A tokenizer.json with an <|endoftext|> special token: every document of the token files ends with its id
    (nanoGPT's and Levanter's convention), documents start where the offsets say, and the batched (parallel) encoding
    gives exactly the ids of encoding each document alone."""
    from tokenizers import AddedToken

    from jscale import config, resolve

    path, tok = _tokenizer_file(tmp_path, text_corpus)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tok.save(str(path))
    eot = tok.token_to_id("<|endoftext|>")
    cfg = resolve.resolve(config.from_dict({"data": {"corpus": str(text_corpus), "tokenizer": f"file:{path}",
                                                     "cache_dir": str(tmp_path / "cache")}}))
    tokens = data.prepare(cfg.data)
    corpus = data.corpus_from_config(cfg.data)
    docs = list(corpus.documents("train"))
    expect = [i for d in docs for i in tok.encode(d).ids + [eot]]
    np.testing.assert_array_equal(np.asarray(tokens.train), expect)
    starts = tokens.document_starts("train")
    assert len(starts) == len(docs) and all(tokens.train[s - 1] == eot for s in starts[1:])
    assert tokens.meta["document_end"] == "<|endoftext|>"
    # bytes and the plain BPE trained here have no such token: documents end with a newline, as before
    plain = data.prepare(DataConfig(corpus=str(text_corpus), cache_dir=str(tmp_path / "cache")))
    assert "document_end" not in plain.meta
    assert bytes(np.asarray(plain.train[:len(docs[0].encode()) + 1])) == (docs[0] + "\n").encode()
