"""Pre-tokenized corpora: `bin:DIR` holds token files as nanoGPT's prepare.py writes them (train.bin, val.bin,
optionally test.bin; `data.bin_dtype` uint16 by default), read in place (memory-mapped, no copy).

- The vocabulary size comes from DIR/meta.pkl (nanoGPT's: vocab_size, and itos, each token's text), DIR/meta.json
  ({"vocab_size": V, optional "bytes_per_token"}) or data.vocab_size.
- val.bin is the validation split, whole. The test split is test.bin; without one, the last TEST_TAIL of train.bin
  is held out of training as the test split, and a line says so (val.bin used to be halved silently).
- Bits per byte need each split's bytes: exact from meta.pkl's itos (every token's UTF-8 length, counted), from
  meta.json's bytes_per_token, or measured by decoding a prefix with the run's tokenizer (file:, gpt2).
- The token-range check (every id below the vocabulary) and the byte counts scan each file once; the result is kept
  in the corpus's cache folder, keyed by the files' sizes and times, so a 10 GB train.bin is not scanned per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from jscale.config import DataConfig
from jscale.data.cache import TokenizedCorpus, cache_root
from jscale.data.tokenizers import FileTokenizer, TiktokenTokenizer, tokenizer_vocab
from jscale.errors import ConfigError, JscaleError
from jscale.files import write_atomic


BIN_SPLITS = {"train": ("train.bin",), "validation": ("val.bin", "validation.bin"), "test": ("test.bin",)}


def bin_dir(cfg: DataConfig) -> Path:
    path = Path(os.path.expanduser(cfg.corpus[len("bin:"):]))
    if not path.is_dir():
        raise ConfigError(f"data.corpus: {cfg.corpus}: not a directory of token files (train.bin, val.bin); the "
                          "experiments' gpu and full scales read one that `jscale corpus --packages-file "
                          "experiments/pypi-corpus.txt --out corpora/pypi` builds")
    return path


def _bin_meta(path: Path) -> dict:
    sidecar = path / "meta.json"
    if not sidecar.exists():
        return {}
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.corpus: {sidecar}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"data.corpus: {sidecar}: expected a JSON object with vocab_size")
    return meta


def bin_vocab(cfg: DataConfig) -> int:
    """A bin: corpus's vocabulary: meta.pkl's or meta.json's vocab_size beside the token files, else data.vocab_size
    given."""
    meta = {**nanogpt_meta(bin_dir(cfg)), **_bin_meta(bin_dir(cfg))}
    if "vocab_size" in meta:
        v = meta["vocab_size"]
        if not isinstance(v, int) or v < 2:
            raise ConfigError(f"data.corpus: {bin_dir(cfg) / 'meta.json'}: vocab_size must be an integer >= 2")
        if cfg.vocab_size not in (DataConfig.vocab_size, v):
            raise ConfigError(f"data.vocab_size: {cfg.vocab_size} contradicts meta.json's vocab_size = {v}")
        return v
    if cfg.vocab_size == DataConfig.vocab_size:
        raise ConfigError(f"data.vocab_size: give the vocabulary size of {cfg.corpus} (or put a meta.json with "
                          f"vocab_size beside its token files)")
    return cfg.vocab_size


TEST_TAIL = 0.01  # without test.bin, this share of train.bin (its end) is the test split
DECODE_PREFIX = 1 << 20  # tokens decoded to measure bytes per token with a tokenizer


class _PlainUnpickler(pickle.Unpickler):
    """nanoGPT's meta.pkl holds only dicts, ints and strings: nothing else is loaded from it."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in meta.pkl")


def nanogpt_meta(path: Path) -> dict:
    """DIR/meta.pkl (vocab_size, itos, stoi), or {} when there is none; a one-line error when unreadable."""
    f = path / "meta.pkl"
    if not f.is_file():
        return {}
    try:
        with open(f, "rb") as fh:
            meta = _PlainUnpickler(fh).load()
    except Exception as e:  # noqa: BLE001 (a damaged or foreign pickle)
        raise ConfigError(f"data.corpus: {f}: not nanoGPT's meta.pkl ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"data.corpus: {f}: expected a dict with vocab_size (nanoGPT's meta.pkl)")
    return meta


def open_bin(cfg: DataConfig) -> TokenizedCorpus:
    """train.bin, val.bin (or validation.bin) and test.bin of a bin: directory (see the module's docstring)."""
    path = bin_dir(cfg)
    dtype = np.dtype(cfg.bin_dtype)
    vocab = bin_corpus_vocab(cfg)  # meta.pkl / meta.json / data.vocab_size, or the tokenizer file's
    files = {}
    for split, names in BIN_SPLITS.items():
        found = next((path / n for n in names if (path / n).is_file()), None)
        if found is not None:
            files[split] = found
    for split in ("train", "validation"):
        if split not in files:
            raise ConfigError(f"data.corpus: {path}: no {' or '.join(BIN_SPLITS[split])}")
    arrays = {}
    for split, f in files.items():
        size = f.stat().st_size
        if size % dtype.itemsize or size == 0:
            raise ConfigError(f"data.corpus: {f}: {size} bytes is not a whole number of {cfg.bin_dtype} tokens "
                              f"(garbled, or another data.bin_dtype)")
        arrays[split] = np.memmap(f, dtype=dtype, mode="r")
    digest = hashlib.sha256()
    sidecars = {name: path / name for name in ("meta.pkl", "meta.json") if (path / name).is_file()}
    for split, f in sorted({**files, **sidecars}.items()):  # the vocabulary files too: they give the bytes
        st = f.stat()
        digest.update(f"{split}:{st.st_size}:{st.st_mtime_ns};".encode())
    corpus_id = f"bin-{digest.hexdigest()[:12]}"
    derived = cache_root(cfg) / corpus_id  # evaluation windows, n-gram scores and the scan below, for this corpus
    try:
        derived.mkdir(parents=True, exist_ok=True)
    except OSError:
        derived = None
    if "test" not in arrays:
        tail = max(int(TEST_TAIL * len(arrays["train"])), 1)
        arrays["test"], arrays["train"] = arrays["train"][-tail:], arrays["train"][:-tail]
        print(f"jscale: {path} has no test.bin: the test split is the last {tail:,} tokens of train.bin "
              f"({100 * TEST_TAIL:g}%), held out of training; val.bin is the validation split", file=sys.stderr,
              flush=True)
    scan = _scan(path, arrays, files, vocab, cfg, derived)
    meta = {"corpus": cfg.corpus, "corpus_id": corpus_id, "tokenizer": "pretokenized", "vocab_size": vocab,
            "dtype": dtype.name, "splits": ["train", "validation", "test"],
            "test_split": "test.bin" if "test" in files else f"the last {TEST_TAIL:g} of train.bin"}
    for split, a in arrays.items():
        meta[f"{split}_tokens"] = len(a)
        meta[f"{split}_bytes"] = scan["bytes"].get(split, float("nan"))
    return TokenizedCorpus(splits={s: arrays[s] for s in ("train", "validation", "test")}, meta=meta, path=derived)


def _scan(path: Path, arrays: dict, files: dict, vocab: int, cfg: DataConfig, derived: Path | None) -> dict:
    """Each split's largest token id (checked against the vocabulary on every open) and its bytes (for bits per
    byte), computed once per version of the files: the result is kept in the cache folder."""
    record = None if derived is None else derived / "scan.json"
    out = None
    if record is not None and record.is_file():
        try:
            out = json.loads(record.read_text())
            out["max_id"], out["bytes"]
        except (OSError, ValueError, KeyError, TypeError):
            out = None
    if out is None:
        out = {"max_id": {split: int(a.max()) if len(a) else 0 for split, a in arrays.items()},
               "bytes": _split_bytes(path, arrays, vocab, cfg)}
        if record is not None:
            try:
                write_atomic(record, json.dumps(out))
            except JscaleError:
                pass  # a read-only cache: scanned again next time
    for split in ("train", "validation", "test"):
        top = out["max_id"][split]
        if top >= vocab:
            raise ConfigError(f"data.corpus: {files.get(split, files['train'])}: token id {top} is not below the "
                              f"vocabulary size {vocab}")
    return out


def _split_bytes(path: Path, arrays: dict, vocab: int, cfg: DataConfig) -> dict:
    """Each split's UTF-8 bytes: exact from meta.pkl's itos, from meta.json's bytes_per_token, or measured on a
    prefix with the run's tokenizer (file:, gpt2, tiktoken:); {} when none of these is there (bits per byte NaN)."""
    nano, sidecar = nanogpt_meta(path), _bin_meta(path)
    if isinstance(nano.get("itos"), dict):  # exact: each token's text, counted
        lengths = np.zeros(vocab, np.float64)
        for i, text in nano["itos"].items():
            if isinstance(i, int) and 0 <= i < vocab:
                lengths[i] = len(str(text).encode())
        return {split: float(np.bincount(np.asarray(a), minlength=vocab)[:vocab] @ lengths)
                for split, a in arrays.items()}
    if sidecar.get("bytes_per_token"):
        return {split: len(a) * float(sidecar["bytes_per_token"]) for split, a in arrays.items()}
    if cfg.tokenizer.startswith("file:"):
        tok = FileTokenizer(cfg.tokenizer[len("file:"):])
    elif cfg.tokenizer == "gpt2" or cfg.tokenizer.startswith("tiktoken:"):
        tok = TiktokenTokenizer(cfg.tokenizer)
    else:
        return {}
    out = {}
    for split, a in arrays.items():
        head = np.asarray(a[:DECODE_PREFIX])
        out[split] = len(tok.decode(head.tolist()).encode()) / max(len(head), 1) * len(a)
    return out


def bin_corpus_vocab(cfg: DataConfig) -> int:
    """A bin: corpus's vocabulary: its tokenizer file's when one decodes it (file:PATH), else bin_vocab's."""
    return tokenizer_vocab(cfg) if cfg.tokenizer.startswith("file:") else bin_vocab(cfg)
