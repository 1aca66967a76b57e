"""A configured corpus, tokenized and ready: which corpus `data.corpus` names, what vocabulary it has, whether
its splits can hold the windows a model needs, and `prepare`, which tokenizes it once into the token cache (or
opens the cached files, or a bin: corpus in place).
"""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path

from jscale.config import DataConfig
from jscale.data.bins import bin_corpus_vocab, bin_dir, open_bin
from jscale.data.cache import (TokenizedCorpus, cache_name, cache_problem, cache_root, open_cache,
                               write_token_files)
from jscale.data.records import hf_corpus, tfds_corpus
from jscale.data.sources import SPLITS, Corpus, FileCorpus, file_corpus_from_config
from jscale.data.tokenizers import BPETokenizer, ByteTokenizer, FileTokenizer, TiktokenTokenizer, tokenizer_vocab
from jscale.errors import ConfigError


def corpus_from_config(cfg: DataConfig) -> Corpus:
    spec = cfg.corpus
    if spec.startswith("bin:"):  # pre-tokenized: nothing to split or tokenize (prepare opens the files)
        return Corpus(id=f"bin-{bin_dir(cfg).name}", description=spec)
    if spec.startswith("tfds:"):
        return tfds_corpus(cfg)
    if spec.startswith("hf:"):
        return hf_corpus(cfg)
    return file_corpus_from_config(cfg)


def corpus_vocab(d: DataConfig) -> int:
    """The vocabulary size a run of this data config has: its tokenizer's, or a bin: corpus's own."""
    if d.corpus.startswith("bin:"):
        return bin_corpus_vocab(d)
    return tokenizer_vocab(d)


@functools.lru_cache(maxsize=16)
def _split_bytes(cfg: DataConfig) -> tuple[Corpus, dict[str, int]] | None:
    corpus = corpus_from_config(cfg)
    return (corpus, corpus.split_bytes()) if isinstance(corpus, FileCorpus) else None


def _split_key(split: str, cfg: DataConfig) -> str:
    """The config key that sizes a split (named in errors)."""
    if split == "train":
        return "data.validation_fraction" if cfg.validation_fraction else "data.test_fraction"
    if split == "validation":
        return "data.validation" if cfg.validation else "data.validation_fraction"
    if split == "test":
        return "data.test" if cfg.test else "data.test_fraction"
    return "data.extra_eval"


def check_sizes(cfg: DataConfig, n_ctx: int, context: int = 0) -> None:
    """Before tokenizing or training a tokenizer: does every split hold one window (a training window, or the
    held-out context and window an evaluation reads)? Counted in bytes from the files; a token is at least one
    byte, so this never refuses a corpus that would fit. (TFDS corpora are checked after tokenizing, by
    TokenizedCorpus.check_fits.)"""
    found = _split_bytes(cfg)
    if found is None:
        return
    corpus, sizes = found
    total = sum(sizes.values())
    if total < n_ctx + 1:
        raise ConfigError(f"model.n_ctx: {n_ctx} is longer than the {total} bytes of {corpus.description}; use a "
                          f"shorter context or more data")
    for split in ("train", "test", "validation", *(s for s in sizes if s not in SPLITS)):
        n_bytes = sizes[split]
        need = n_ctx + 1 if split == "train" else context + n_ctx + 1
        if n_bytes == 0:
            raise ConfigError(f"{_split_key(split, cfg)}: the {split} split of {corpus.description} is empty; "
                              f"raise the fraction, add files, or name its files")
        if n_bytes < need:
            raise ConfigError(f"{_split_key(split, cfg)}: the {split} split of {corpus.description} has {n_bytes} "
                              f"bytes, fewer than the {need} one {'training' if split == 'train' else 'evaluation'} "
                              f"window needs (model.n_ctx = {n_ctx}); use a shorter context or more data")
    if cfg.max_train_tokens > sizes["train"]:  # every token here holds at least one byte
        raise ConfigError(f"data.max_train_tokens: {cfg.max_train_tokens} is more than the train split of "
                          f"{corpus.description} can hold ({sizes['train']} bytes)")


def make_tokenizer(cfg: DataConfig, corpus: Corpus | None = None, root: Path | None = None):
    """The configured tokenizer (a BPE trained on corpus's train split, cached under root, for "bpe")."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer()
    if cfg.tokenizer.startswith("file:"):
        return FileTokenizer(cfg.tokenizer[len("file:"):])
    if cfg.tokenizer == "gpt2" or cfg.tokenizer.startswith("tiktoken:"):
        return TiktokenTokenizer(cfg.tokenizer)
    if corpus is None or root is None:
        corpus, root = corpus_from_config(cfg), cache_root(cfg)
    return BPETokenizer.train_or_load(corpus, cfg.vocab_size, root)


def prepare(cfg: DataConfig) -> TokenizedCorpus:
    """Tokenize the configured corpus once into memory-mapped files, or open the cached ones (a bin: corpus is
    opened in place)."""
    if cfg.corpus.startswith("bin:"):
        return open_bin(cfg)
    corpus = corpus_from_config(cfg)
    root = cache_root(cfg)
    tokenizer = None
    if cfg.tokenizer == "bpe":  # trained (and so loaded) only when the token files must be written
        target = root / cache_name(corpus.id, f"bpe{cfg.vocab_size}")
    else:
        tokenizer = make_tokenizer(cfg)
        target = root / cache_name(corpus.id, tokenizer)
    if (target / "meta.json").exists():
        problem = cache_problem(target)
        if problem is None:
            return open_cache(target)
        print(f"jscale: token cache {target} cannot be used ({problem}); rebuilding it", file=sys.stderr, flush=True)
        shutil.rmtree(target, ignore_errors=True)
    tokenizer = tokenizer or make_tokenizer(cfg, corpus, root)
    write_token_files(corpus, tokenizer, target)
    return open_cache(target)
