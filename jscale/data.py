"""Corpora, tokenization into cached memory-mapped token files, and batches as pure functions of (seed, step).

Corpora (`data.corpus`):
- `builtin:stdlib`: every `.py` file of the running interpreter's standard library (site-packages excluded),
  in sorted path order. On CPython 3.11.7 that is 1,790 files, 31.5 MB, so 31.5M byte tokens; the exact size is
  recorded in the token file's meta.json. Needs no download on any machine with Python.
- a file, directory or glob of local text files;
- `tfds:NAME[/CONFIG]`: a text dataset of the TensorFlow Datasets catalogue, read through `tfds.data_source`
  (ArrayRecord, no TensorFlow); its test (or validation) split is the held-out split.
Documents are held out by a stable hash (SHA-256) of their name, so the split never depends on file order.

Tokenized corpora are cached under `cache_dir/<corpus>-<tokenizer>/` as train.bin / test.bin (raw uint8, uint16 or
uint32) with meta.json, written to a temporary directory and renamed into place, so a killed process never leaves a
half-written cache.
"""

from __future__ import annotations

import functools
import glob as globlib
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from jscale import interrupts
from jscale.config import ConfigError, DataConfig

CHUNK_BYTES = 1 << 16  # a corpus of few files is split into documents of about this size (at line ends)
DOC_SEPARATOR = "\n"


# ---------------------------------------------------------------------------------------------------------------
# Corpora: a stable id and two streams of documents.


def _hash_fraction(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Corpus:
    id: str  # names the corpus and its version in the cache
    description: str

    def documents(self, split: str) -> Iterator[str]:
        raise NotImplementedError


def _chunks(text: str, size: int = CHUNK_BYTES) -> list[str]:
    """Split text at line ends into pieces of about `size` characters."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


@dataclass(frozen=True)
class FileCorpus(Corpus):
    root: Path
    files: tuple[Path, ...]
    test_fraction: float

    def _named_documents(self) -> Iterator[tuple[str, str]]:
        chunked = len(self.files) < 20  # too few files to hold some out by name: hold out chunks instead
        for path in self.files:
            text = path.read_text(encoding="utf-8", errors="replace")
            name = path.relative_to(self.root).as_posix()
            if chunked:
                yield from ((f"{name}#{i}", piece) for i, piece in enumerate(_chunks(text)))
            else:
                yield name, text

    def in_split(self, name: str, split: str) -> bool:
        return (_hash_fraction(name) < self.test_fraction) == (split == "test")

    def split_bytes(self) -> dict[str, int]:
        """Bytes each split will hold (documents and separators), from the files alone: no tokenizing."""
        sizes = {"train": 0, "test": 0}
        if len(self.files) < 20:  # chunked documents: split exactly as _named_documents will
            for name, text in self._named_documents():
                sizes["test" if self.in_split(name, "test") else "train"] += len(text.encode()) + 1
            return sizes
        for path in self.files:
            name = path.relative_to(self.root).as_posix()
            sizes["test" if self.in_split(name, "test") else "train"] += path.stat().st_size + 1
        return sizes

    def names(self, split: str) -> list[str]:
        return [name for name, _ in self._named_documents() if self.in_split(name, split)]

    def documents(self, split: str) -> Iterator[str]:
        for name, text in self._named_documents():
            if self.in_split(name, split):
                yield text


def _file_corpus(files: list[Path], root: Path, label: str, cfg: DataConfig) -> FileCorpus:
    files = sorted(files, key=lambda p: p.relative_to(root).as_posix())
    stamp = hashlib.sha256()
    for p in files:
        st = p.stat()
        stamp.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns};".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[-40:]
    return FileCorpus(id=f"{slug}-{stamp.hexdigest()[:12]}-test{cfg.test_fraction:g}",
                      description=f"{label}: {len(files)} files", root=root, files=tuple(files),
                      test_fraction=cfg.test_fraction)


def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    return root, files


@dataclass(frozen=True)
class TfdsCorpus(Corpus):
    name: str
    data_dir: str | None
    test_fraction: float

    def _source(self, split: str):
        import tensorflow_datasets as tfds

        return tfds.data_source(self.name, split=split, data_dir=self.data_dir)

    def _splits(self) -> dict:
        import tensorflow_datasets as tfds

        return tfds.builder(self.name, data_dir=self.data_dir).info.splits

    def _text_key(self) -> str:
        import tensorflow_datasets as tfds

        features = tfds.builder(self.name, data_dir=self.data_dir).info.features
        keys = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
        if not keys:
            raise ConfigError(f"data.corpus: tfds:{self.name} has no text feature")
        return "text" if "text" in keys else keys[0]

    def documents(self, split: str) -> Iterator[str]:
        key, splits = self._text_key(), self._splits()
        held_out = next((s for s in ("test", "validation") if s in splits), None)
        if held_out is not None:
            source = self._source("train" if split == "train" else held_out)
            keep = lambda i: True
        else:  # no held-out split: hold out examples by a hash of their index
            source = self._source("train")
            keep = lambda i: (_hash_fraction(f"{self.name}:{i}") < self.test_fraction) == (split == "test")
        for i in range(len(source)):
            if keep(i):
                text = source[i][key]
                yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _check_tfds_prepared(name: str, data_dir: str | None) -> None:
    """A one-line error, before any work, when a TFDS dataset is unknown or not prepared on this machine."""
    import logging

    import tensorflow_datasets as tfds

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # TFDS warns about missing folders on stderr; the error below says it
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # noqa: BLE001 (unknown names, missing optional modules of a dataset's builder, ...)
        raise ConfigError(f"data.corpus: tfds:{name} cannot be loaded ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]})") from None
    finally:
        absl_logger.setLevel(level)
    if not prepared:
        where = data_dir or "TFDS's default data_dir"
        raise ConfigError(f"data.corpus: tfds:{name} is not prepared in {where}; prepare it where there is network "
                          f"(tfds build {name.split('/')[0]}) and set data.tfds_data_dir to its folder")


@functools.lru_cache(maxsize=16)
def _split_bytes(cfg: DataConfig) -> tuple[Corpus, dict[str, int]] | None:
    corpus = corpus_from_config(cfg)
    return (corpus, corpus.split_bytes()) if isinstance(corpus, FileCorpus) else None


def check_sizes(cfg: DataConfig, n_ctx: int, context: int = 0) -> None:
    """Before tokenizing or training a tokenizer: do the splits hold one training window and the held-out context?
    Counted in bytes from the files; a token is at least one byte, so this never refuses a corpus that would fit.
    (TFDS corpora are checked after tokenizing, by TokenizedCorpus.check_fits.)"""
    found = _split_bytes(cfg)
    if found is None:
        return
    corpus, sizes = found
    need_test = context + n_ctx + 1
    total = sizes["train"] + sizes["test"]
    if total < n_ctx + 1:
        raise ConfigError(f"model.n_ctx: {n_ctx} is longer than the {total} bytes of {corpus.description}; use a "
                          f"shorter context or more data")
    if sizes["train"] < n_ctx + 1:
        raise ConfigError(f"data.test_fraction: {cfg.test_fraction:g} leaves {sizes['train']} bytes of "
                          f"{corpus.description} to train on, fewer than one window of model.n_ctx + 1 = {n_ctx + 1}; "
                          f"lower data.test_fraction or add files")
    if sizes["test"] < need_test:
        raise ConfigError(f"data.test_fraction: {cfg.test_fraction:g} holds out {sizes['test']} bytes of "
                          f"{corpus.description}, fewer than the {need_test} one evaluation window needs; raise "
                          f"data.test_fraction or add files")


def corpus_from_config(cfg: DataConfig) -> Corpus:
    spec = cfg.corpus
    if spec == "builtin:stdlib":
        root, files = stdlib_files()
        v = sys.version_info
        corpus = _file_corpus(files, root, f"stdlib-py{v.major}.{v.minor}.{v.micro}", cfg)
        return corpus
    if spec.startswith("builtin:"):
        raise ConfigError(f"data.corpus: unknown built-in corpus {spec!r} (the built-in one is builtin:stdlib)")
    if spec.startswith("tfds:"):
        name = spec[len("tfds:"):]
        try:
            import tensorflow_datasets  # noqa: F401  (only to say clearly that it is missing)
        except ImportError:
            raise ConfigError(f"data.corpus: {spec} needs tensorflow-datasets (pip install tensorflow-datasets)")
        data_dir = cfg.tfds_data_dir or None
        _check_tfds_prepared(name, data_dir)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"tfds_{name}_{data_dir or 'default'}")[-60:]
        return TfdsCorpus(id=f"{slug}-test{cfg.test_fraction:g}", description=spec, name=name, data_dir=data_dir,
                          test_fraction=cfg.test_fraction)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        files, root = [p for p in path.rglob("*") if p.is_file()], path
    elif path.is_file():
        files, root = [path], path.parent
    else:
        files = [Path(p) for p in globlib.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file()]
        root = Path(os.path.commonpath([p.parent for p in files])) if files else Path(".")
    if not files:
        raise ConfigError(f"data.corpus: no files match {spec!r}")
    return _file_corpus(files, root, spec, cfg)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers.


class ByteTokenizer:
    vocab_size = 256
    id = "bytes"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8)


class BPETokenizer:
    """Byte-level BPE (HuggingFace `tokenizers`), trained on the training split and cached as JSON."""

    def __init__(self, tokenizer, vocab_size: int):
        self._tok, self.vocab_size, self.id = tokenizer, vocab_size, f"bpe{vocab_size}"

    @classmethod
    def train_or_load(cls, corpus: Corpus, vocab_size: int, cache_dir: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        path = cache_dir / f"{corpus.id}-bpe{vocab_size}.json"
        if path.exists():
            return cls(Tokenizer.from_file(str(path)), vocab_size)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(corpus.documents("train"), trainer=trainer)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)
        return cls(tok, vocab_size)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, np.uint32)

    def decode(self, ids) -> str:
        return self._tok.decode(list(map(int, ids)))


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


# ---------------------------------------------------------------------------------------------------------------
# Tokenized corpora on disk, and the windows drawn from them.


@dataclass
class TokenizedCorpus:
    train: np.ndarray  # memory-mapped token ids, (n_train,)
    test: np.ndarray  # (n_test,)
    meta: dict

    @property
    def test_bytes_per_token(self) -> float:
        return self.meta["test_bytes"] / max(len(self.test), 1)

    def check_fits(self, n_ctx: int, max_train_tokens: int, eval_windows: int, context: int = 0) -> None:
        limit = len(self.train) if max_train_tokens == 0 else min(max_train_tokens, len(self.train))
        if limit < n_ctx + 1:
            raise ConfigError(f"model.n_ctx: {n_ctx} is longer than the {limit} training tokens of "
                              f"{self.meta['corpus']}")
        if len(self.test) < context + n_ctx + 1:
            key = "model.eval_mem_len" if context else "model.n_ctx"
            raise ConfigError(f"{key}: {context + n_ctx} tokens of context are longer than the {len(self.test)} "
                              f"held-out tokens of {self.meta['corpus']} (raise data.test_fraction or use more data)")

    def train_batch(self, seed: int, step: int, batch_size: int, n_ctx: int, max_train_tokens: int = 0,
                    consecutive: bool = False) -> np.ndarray:
        return train_batch(self.train, seed, step, batch_size, n_ctx, max_train_tokens, consecutive)

    def eval_windows(self, n_windows: int, n_ctx: int, context: int = 0) -> np.ndarray:
        return eval_windows(self.test, n_windows, n_ctx, context)


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, n_ctx: int, max_train_tokens: int = 0,
                consecutive: bool = False) -> np.ndarray:
    """Windows of n_ctx + 1 tokens, (batch_size, n_ctx + 1) int32: a pure function of (seed, step).

    Random windows; or, with consecutive=True (Transformer-XL), row b reads its own token stream segment by
    segment: the stream starts at a random offset drawn from (seed, b) and step k reads its k-th segment
    (wrapping around at the end). Only the first max_train_tokens tokens (all when 0) are ever drawn from.
    """
    limit = len(tokens) if max_train_tokens == 0 else min(max_train_tokens, len(tokens))
    if consecutive:
        starts_B = (_stream_offsets(seed, batch_size, limit - n_ctx) + step * n_ctx) % (limit - n_ctx)
    else:
        starts_B = np.random.default_rng([seed, step]).integers(0, limit - n_ctx, size=batch_size)
    return np.asarray(tokens[starts_B[:, None] + np.arange(n_ctx + 1)], np.int32)


@functools.lru_cache(maxsize=64)
def _stream_offsets(seed: int, batch_size: int, span: int) -> np.ndarray:
    """Where each batch row's token stream starts: drawn from (seed, row), the same at every step."""
    offsets_B = np.array([np.random.default_rng([seed, b]).integers(0, span) for b in range(batch_size)])
    offsets_B.flags.writeable = False
    return offsets_B


def eval_windows(tokens: np.ndarray, n_windows: int, n_ctx: int, context: int = 0) -> np.ndarray:
    """A fixed set of held-out windows, evenly spaced over the test split: (n_windows, context + n_ctx + 1) int32.

    The last n_ctx + 1 tokens of each are evaluated; the `context` tokens before them fill a memory first."""
    starts_W = np.linspace(0, len(tokens) - context - n_ctx - 1, n_windows).astype(np.int64)
    return np.asarray(tokens[starts_W[:, None] + np.arange(context + n_ctx + 1)], np.int32)


def cache_root(cfg: DataConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir or os.environ.get("JSCALE_CACHE", "~/.cache/jscale")))


def prepare(cfg: DataConfig) -> TokenizedCorpus:
    """Tokenize the configured corpus once into memory-mapped files, or open the cached ones."""
    corpus = corpus_from_config(cfg)
    root = cache_root(cfg)
    tokenizer_id = "bytes" if cfg.tokenizer == "bytes" else f"bpe{cfg.vocab_size}"
    target = root / f"{corpus.id}-{tokenizer_id}"
    if (target / "meta.json").exists():
        problem = _cache_problem(target)
        if problem is None:
            return _open_cache(target)
        print(f"jscale: token cache {target} is damaged ({problem}); rebuilding it", file=sys.stderr, flush=True)
        shutil.rmtree(target, ignore_errors=True)
    tokenizer = ByteTokenizer() if cfg.tokenizer == "bytes" else BPETokenizer.train_or_load(
        corpus, cfg.vocab_size, root)
    _write_token_files(corpus, tokenizer, target)
    return _open_cache(target)


def _open_cache(target: Path) -> TokenizedCorpus:
    meta = json.loads((target / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    open_split = lambda s: (np.memmap(target / f"{s}.bin", dtype=dtype, mode="r") if meta[f"{s}_tokens"]
                            else np.zeros(0, dtype))
    return TokenizedCorpus(train=open_split("train"), test=open_split("test"), meta=meta)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _cache_problem(target: Path) -> str | None:
    """Why a token cache cannot be trusted (a file missing, cut short or changed since it was written), or None.
    Caches from before checksums were recorded are checked by size only."""
    try:
        meta = json.loads((target / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "test"):
            path = target / f"{split}.bin"
            if not path.exists():
                return f"{path.name} is missing"
            if path.stat().st_size != meta[f"{split}_tokens"] * itemsize:
                return f"{path.name} has {path.stat().st_size} bytes, not {meta[f'{split}_tokens'] * itemsize}"
            if f"{split}_sha256" in meta and _file_digest(path) != meta[f"{split}_sha256"]:
                return f"{path.name} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json unreadable: {e}"
    return None


def _write_token_files(corpus: Corpus, tokenizer, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    dtype = _token_dtype(tokenizer.vocab_size)
    meta = {"corpus": corpus.description, "corpus_id": corpus.id, "tokenizer": tokenizer.id,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype.name}
    try:
        for split in ("train", "test"):
            n_tokens = n_bytes = n_docs = 0
            with open(tmp / f"{split}.bin", "wb") as f:
                for text in corpus.documents(split):
                    interrupts.check()  # between documents: the temporary directory is removed below
                    text += DOC_SEPARATOR
                    ids = tokenizer.encode(text).astype(dtype)
                    f.write(ids.tobytes())
                    n_tokens, n_bytes, n_docs = n_tokens + len(ids), n_bytes + len(text.encode()), n_docs + 1
            meta.update({f"{split}_tokens": n_tokens, f"{split}_bytes": n_bytes, f"{split}_documents": n_docs,
                         f"{split}_sha256": _file_digest(tmp / f"{split}.bin")})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same cache first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
