"""Data sources and tokenizers that come from the ecosystem (HF datasets, tiktoken's GPT-2 BPE, TFDS downloads),
each built from small local data and checked against the same text through the plain file source."""

import os
import subprocess

import numpy as np
import pytest

from jscale import config, data, resolve
from jscale.data import tokenizers
from jscale.config import ConfigError, DataConfig
from conftest import jscale_cmd

datasets = pytest.importorskip("datasets")

DOCS = {"train": [f"def f{i}(x):\n    return x * {i}  # the loss falls as a power law\n" for i in range(40)],
        "validation": [f"validation document {i}: held out for model selection\n" for i in range(6)],
        "test": [f"test document {i}: read only for reporting\n" for i in range(6)]}


def _as_files(root, split_files=True):
    """The same documents as one text file each, named so that sorted order is row order."""
    for split, docs in DOCS.items():
        for i, text in enumerate(docs):
            path = root / split / f"doc_{i:03d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return DataConfig(corpus=str(root / "train"), validation=str(root / "validation"), test=str(root / "test"),
                      cache_dir=str(root / "cache"))


@pytest.fixture(scope="module")
def file_tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    return data.prepare(_as_files(root))


def _dataset_dict():
    return datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": docs, "n": list(range(len(docs)))})
                                 for split, docs in DOCS.items()})


def _same_tokens(a, b):
    for split in data.SPLITS:
        np.testing.assert_array_equal(np.asarray(a.splits[split]), np.asarray(b.splits[split]), err_msg=split)


def test_hf_saved_dataset_gives_the_tokens_of_the_same_text_as_files(tmp_path, file_tokens):
    _dataset_dict().save_to_disk(str(tmp_path / "saved"))
    tokens = data.prepare(DataConfig(corpus=f"hf:{tmp_path / 'saved'}", cache_dir=str(tmp_path / "cache")))
    assert tokens.meta["validation_documents"] == 6 and tokens.meta["test_documents"] == 6  # its own splits
    _same_tokens(tokens, file_tokens)


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_hf_local_files_give_the_tokens_of_the_same_text_as_files(tmp_path, file_tokens, kind):
    for split, ds in _dataset_dict().items():
        path = tmp_path / "files" / f"{split}.{kind}"
        path.parent.mkdir(exist_ok=True)
        ds.to_parquet(str(path)) if kind == "parquet" else ds.to_json(str(path), lines=True)
    tokens = data.prepare(DataConfig(corpus=f"hf:{tmp_path / 'files'}", cache_dir=str(tmp_path / "cache")))
    _same_tokens(tokens, file_tokens)


def test_hf_text_column_is_chosen_by_key_and_a_missing_one_is_named(tmp_path):
    # 400 records: records are hash-split by name, and the name holds the (random) temporary path, so with 40 a 5%
    # validation split came out empty in about one run in eight (0.95^40); with 400, about one in 10^9.
    ds = datasets.Dataset.from_dict({"title": ["a", "b"] * 200, "body": [f"body text {i}\n" for i in range(400)]})
    ds.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ConfigError, match=r"data.text_column: .* several text columns \(title, body\)"):
        data.corpus_from_config(DataConfig(corpus=f"hf:{tmp_path / 'two'}"))
    with pytest.raises(ConfigError, match=r"data.text_column: .* has no column 'content'"):
        data.corpus_from_config(DataConfig(corpus=f"hf:{tmp_path / 'two'}", text_column="content"))
    corpus = data.corpus_from_config(DataConfig(corpus=f"hf:{tmp_path / 'two'}", text_column="body"))
    held = [d for s in data.SPLITS for d in corpus.documents(s)]
    assert sorted(held) == sorted(f"body text {i}\n" for i in range(400))  # hash-split, nothing lost or repeated
    assert 0 < sum(1 for _ in corpus.documents("validation")) < 60  # 5% of 400: 20 +- 4.4


def test_hf_hub_id_without_network_is_one_line_naming_the_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("JSCALE_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"^data.corpus: hf:nobody/no_such_dataset cannot be loaded") as e:
        data.corpus_from_config(DataConfig(corpus="hf:nobody/no_such_dataset"))
    assert "\n" not in str(e.value)


def test_tfds_not_prepared_and_offline_is_one_line_without_waiting_for_retries(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("JSCALE_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot reach the network"):
        data.corpus_from_config(DataConfig(corpus="tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.download = false"):
        data.corpus_from_config(DataConfig(corpus="tfds:tiny_shakespeare", tfds_data_dir=str(tmp_path),
                                           download=False))
    assert not any(tmp_path.iterdir())


def _tiny_encoding():
    """A real tiktoken Encoding (GPT-2's split pattern, bytes plus a few merges) standing in for GPT-2's, whose
    rank file needs network."""
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b" the", b"lo", b"loss"):
        ranks[merge] = len(ranks)
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": len(ranks)})


def test_gpt2_tokenizer_sets_the_vocabulary_and_encodes_every_split(tmp_path, file_tokens, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    enc = _tiny_encoding()
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc if name == "gpt2" else None)
    tokenizers.load_tiktoken.cache_clear()
    try:
        files = _as_files(tmp_path)
        cfg = resolve.resolve(config.from_dict({"data": {"corpus": files.corpus, "validation": files.validation,
                                                         "test": files.test, "tokenizer": "gpt2",
                                                         "cache_dir": files.cache_dir}}))
        assert cfg.model.vocab_size == enc.n_vocab == 263
        tokens = data.prepare(cfg.data)
        # each document ends with GPT-2's <|endoftext|> (id 262 here), as nanoGPT and Levanter write them
        expect = [t for d in DOCS["test"] for t in enc.encode_ordinary(d) + [enc.eot_token]]
        np.testing.assert_array_equal(np.asarray(tokens.test), expect)
        assert enc.eot_token == 262 and tokens.meta["document_end"] == "<|endoftext|>"
        assert tokens.meta["test_bytes"] == sum(len(d.encode()) for d in DOCS["test"])  # the text's bytes only
        assert len(tokens.train) < len(file_tokens.train)  # "the loss" merged: fewer tokens than bytes
        assert data.make_tokenizer(cfg.data).decode(tokens.test[:12]) == DOCS["test"][0][:len(enc.decode(expect[:12]))]
        with pytest.raises(ConfigError, match="model.vocab_size: follows the tokenizer"):
            resolve.resolve(config.from_dict({"data": {"tokenizer": "gpt2"}, "model": {"vocab_size": 50304}}))
    finally:
        tokenizers.load_tiktoken.cache_clear()


def test_gpt2_tokenizer_without_network_or_cache_is_one_line(tmp_path):
    pytest.importorskip("tiktoken")
    (tmp_path / "run.toml").write_text("[model]\nn_layer = 2\n")
    r = subprocess.run(jscale_cmd("info", str(tmp_path / "run.toml"), "data.tokenizer=gpt2"), capture_output=True,
                       text=True, env={**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("jscale: error: data.tokenizer: gpt2: the encoding is not")


def test_held_out_records_are_chosen_by_their_text_whatever_holds_them(tmp_path):
    """One set of records (train only: validation and test are held out by hash) through a save_to_disk folder, a
    jsonl file and a parquet file in other folders, shuffled: the same documents in each split, and a record that
    appears twice is in one split only."""
    texts = [f"record {i}: {'x' * (i % 7)}\n" for i in range(300)] + ["a repeated record\n"] * 3
    ds = datasets.Dataset.from_dict({"text": texts})
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "elsewhere").mkdir()
    ds.shuffle(seed=1).to_json(str(tmp_path / "elsewhere" / "train.jsonl"), lines=True)
    (tmp_path / "third").mkdir()
    ds.shuffle(seed=2).to_parquet(str(tmp_path / "third" / "train.parquet"))
    splits = []
    for source in ("saved", "elsewhere", "third"):
        corpus = data.corpus_from_config(DataConfig(corpus=f"hf:{tmp_path / source}"))
        splits.append({s: sorted(corpus.documents(s)) for s in data.SPLITS})
    assert splits[0] == splits[1] == splits[2]
    assert sum(len(docs) for docs in splits[0].values()) == len(texts)  # nothing lost or repeated
    assert len(splits[0]["validation"]) > 0 and len(splits[0]["test"]) > 0
    holding = [s for s, docs in splits[0].items() if "a repeated record\n" in docs]
    assert len(holding) == 1 and splits[0][holding[0]].count("a repeated record\n") == 3
