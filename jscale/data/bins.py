"""Pre-tokenized corpora: `bin:DIR` holds token files as nanoGPT's prepare.py writes them (train.bin, val.bin,
optionally test.bin; `data.bin_dtype` uint16 by default), read in place (memory-mapped, no copy). The vocabulary
size comes from DIR/meta.json ({"vocab_size": V, optional "bytes_per_token"}) or data.vocab_size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from jscale.config import DataConfig
from jscale.data.cache import TokenizedCorpus, cache_root
from jscale.data.tokenizers import tokenizer_vocab
from jscale.errors import ConfigError


BIN_SPLITS = {"train": ("train.bin",), "validation": ("val.bin", "validation.bin"), "test": ("test.bin",)}


def bin_dir(cfg: DataConfig) -> Path:
    path = Path(os.path.expanduser(cfg.corpus[len("bin:"):]))
    if not path.is_dir():
        raise ConfigError(f"data.corpus: {cfg.corpus}: not a directory of token files (train.bin, val.bin)")
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
    """A bin: corpus's vocabulary: meta.json's vocab_size beside the token files, else data.vocab_size given."""
    meta = _bin_meta(bin_dir(cfg))
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


def open_bin(cfg: DataConfig) -> TokenizedCorpus:
    """train.bin, val.bin (or validation.bin) and test.bin of a bin: directory; without test.bin the second half
    of val.bin is the test split and the first half validation. Every token id is checked against the vocabulary."""
    path = bin_dir(cfg)
    dtype = np.dtype(cfg.bin_dtype)
    vocab = bin_corpus_vocab(cfg)  # meta.json / data.vocab_size, or the tokenizer file's when one decodes them
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
    if "test" not in arrays:
        half = len(arrays["validation"]) // 2
        arrays["validation"], arrays["test"] = arrays["validation"][:half], arrays["validation"][half:]
    digest = hashlib.sha256()
    for split in ("train", "validation", "test"):
        top = int(arrays[split].max())
        if top >= vocab:
            raise ConfigError(f"data.corpus: {files.get(split, files['validation'])}: token id {top} is not below "
                              f"the vocabulary size {vocab}")
        st = files.get(split, files["validation"]).stat()
        digest.update(f"{split}:{st.st_size}:{st.st_mtime_ns};".encode())
    meta = {"corpus": cfg.corpus, "corpus_id": f"bin-{digest.hexdigest()[:12]}", "tokenizer": "pretokenized",
            "vocab_size": vocab, "dtype": dtype.name, "splits": ["train", "validation", "test"]}
    bytes_per_token = _bin_meta(path).get("bytes_per_token")  # for bits per byte; unknown: NaN
    for split, a in arrays.items():
        meta[f"{split}_tokens"] = len(a)
        meta[f"{split}_bytes"] = len(a) * bytes_per_token if bytes_per_token else float("nan")
    derived = cache_root(cfg) / meta["corpus_id"]  # evaluation windows and n-gram scores for this corpus
    try:
        derived.mkdir(parents=True, exist_ok=True)
    except OSError:
        derived = None
    return TokenizedCorpus(splits={s: arrays[s] for s in ("train", "validation", "test")}, meta=meta, path=derived)


def bin_corpus_vocab(cfg: DataConfig) -> int:
    """A bin: corpus's vocabulary: its tokenizer file's when one decodes it (file:PATH), else bin_vocab's."""
    return tokenizer_vocab(cfg) if cfg.tokenizer.startswith("file:") else bin_vocab(cfg)
