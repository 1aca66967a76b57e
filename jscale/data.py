"""Corpora, their splits, tokenization into cached memory-mapped token files, and batches as pure functions of
(seed, step).

Every corpus has three disjoint splits, `train`, `validation` and `test`, plus any number of named extra evaluation
sets that no model trains on. Model selection (learning-rate pilots, early stopping, best checkpoints) reads
`validation` only; `test` is read for reporting.

Corpora (`data.corpus`):
- `builtin:stdlib`: every `.py` file of the running interpreter's standard library (site-packages excluded).
  Files are cut into pieces of about 16 kB (at line ends) and each piece is dealt to a split by a hash of its
  name, so every split is a representative mix of the library (no file is more than 5% of any split; tested).
  The English prose of the library (`pydoc_data/`, Sphinx-generated documentation in string literals, and files
  whose bytes are mostly runs of English words) is in no split: it is the extra evaluation set `prose`, a second
  distribution no model trains on (Kaplan et al. Fig. 8). Needs no download on any machine with Python.
- a file, directory or glob of local text files. `data.validation` / `data.test` may name files or globs that form
  those splits (wikitext's `wiki.valid.raw`); otherwise documents (files, or ~4 kB pieces of a corpus of fewer
  than 400 files) are held out by a stable hash of their name. `data.extra_eval = "NAME=GLOB,..."` adds named sets.
- `tfds:NAME[/CONFIG]`: a text dataset of the TensorFlow Datasets catalogue, read through `tfds.data_source`
  (ArrayRecord, no TensorFlow); its own validation and test splits where it has them. Downloaded and prepared
  where the machine has network (`data.download`), else a one-line error.

Tokenizers (`data.tokenizer`): bytes; a byte-level BPE trained on the train split (`bpe`, `data.vocab_size`);
GPT-2's BPE (`gpt2`, through tiktoken) or any `tiktoken:NAME`; any HF tokenizer.json (`file:PATH`).
- `hf:SOURCE`: HF `datasets` (extra `hf`): a directory written by `save_to_disk`, local parquet/jsonl/json/text/csv
  files (a file, directory or glob; a file named *validation*/*valid*/*test* is that split), or a hub id
  (`data.hf_name` its configuration) where there is network or the HF cache holds it. The text column is
  `data.text_column`, else "text", else the only string column. Its own validation and test splits where it has them.
- `bin:DIR`: pre-tokenized token files as nanoGPT's prepare.py writes them (train.bin, val.bin, optionally
  test.bin; `data.bin_dtype` uint16 by default), read in place; the vocabulary size from DIR/meta.json
  ({"vocab_size": V, optional "bytes_per_token"}) or data.vocab_size.

Tokenized corpora are cached under `cache_dir/<corpus>-<tokenizer>/` as one `<split>.bin` per split (raw uint8,
uint16 or uint32) with meta.json, written to a temporary directory and renamed into place, so a killed process
never leaves a half-written cache.
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

SPLITS = ("train", "validation", "test")
HELD_OUT = ("validation", "test")
CHUNK_BYTES = 1 << 12  # a corpus of fewer than CHUNK_BELOW_FILES files is dealt to splits in pieces of this size
CHUNK_BELOW_FILES = 400
BUILTIN_CHUNK_BYTES = 1 << 14  # the built-in corpus is always dealt in pieces (each split a mix of the library)
PROSE_SHARE = 0.4  # a built-in file whose bytes are at least this share English-word runs is prose, not code
DOC_SEPARATOR = "\n"
CORPUS_VERSION = 2  # bump when the split rules change: cached token files of another version are not reused


# ---------------------------------------------------------------------------------------------------------------
# Corpora: a stable id and a stream of documents per split.


def _hash_fraction(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_by_hash(name: str, validation_fraction: float, test_fraction: float) -> str:
    """The held-out split a document belongs to, by a stable hash of its name: test below test_fraction, then
    validation, else train (so changing validation_fraction never moves a document into or out of test)."""
    h = _hash_fraction(name)
    return "test" if h < test_fraction else "validation" if h < test_fraction + validation_fraction else "train"


@dataclass(frozen=True)
class Corpus:
    id: str  # names the corpus and its version in the cache
    description: str

    def split_names(self) -> tuple[str, ...]:
        return SPLITS

    def documents(self, split: str) -> Iterator[str]:
        raise NotImplementedError


def _chunks(text: str, size: int) -> list[str]:
    """Split text at line ends into pieces of about `size` characters."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


_ENGLISH_RUN = re.compile(r"[A-Za-z][a-z]+(?:,?(?: |\\n)[A-Za-z(][a-z)]+[.,;:]?){4,}")


def prose_share(text: str) -> float:
    """The share of a text's characters in runs of five or more English words (docstrings, comments, prose)."""
    return sum(len(m.group(0)) for m in _ENGLISH_RUN.finditer(text)) / max(len(text), 1)


@dataclass(frozen=True)
class FileCorpus(Corpus):
    root: Path
    files: tuple[Path, ...]
    validation_fraction: float
    test_fraction: float
    chunk_bytes: int  # 0: each file is one document
    assigned: tuple[tuple[str, str], ...] = ()  # (file name, split) for files whose split is given, not hashed
    extra: tuple[str, ...] = ()  # names of the extra evaluation sets among the assigned splits

    def split_names(self) -> tuple[str, ...]:
        return SPLITS + self.extra

    def _named_documents(self) -> Iterator[tuple[str, str, str]]:
        """(document name, split, text) in path order."""
        given = dict(self.assigned)
        for path in self.files:
            name = path.relative_to(self.root).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            if name in given:
                yield name, given[name], text
            elif self.chunk_bytes:
                for i, piece in enumerate(_chunks(text, self.chunk_bytes)):
                    piece_name = f"{name}#{i}"
                    yield piece_name, self.split_of(piece_name), piece
            else:
                yield name, self.split_of(name), text

    def split_of(self, name: str) -> str:
        return split_by_hash(name, self.validation_fraction, self.test_fraction)

    def split_bytes(self) -> dict[str, int]:
        """Bytes each split will hold (documents and separators), from the files alone: no tokenizing. Whole-file
        documents are sized from the file system; only pieces of files are read."""
        sizes = dict.fromkeys(self.split_names(), 0)
        if not self.chunk_bytes:
            given = dict(self.assigned)
            for path in self.files:
                name = path.relative_to(self.root).as_posix()
                sizes[given.get(name) or self.split_of(name)] += path.stat().st_size + 1
            return sizes
        for _, split, text in self._named_documents():
            sizes[split] += len(text.encode()) + 1
        return sizes

    def names(self, split: str) -> list[str]:
        return [name for name, s, _ in self._named_documents() if s == split]

    def documents(self, split: str) -> Iterator[str]:
        for _, s, text in self._named_documents():
            if s == split:
                yield text


def _glob_files(spec: str, key: str) -> tuple[list[Path], Path]:
    """The files a path, directory or glob names, and the folder their names are relative to."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        files, root = [p for p in path.rglob("*") if p.is_file()], path
    elif path.is_file():
        files, root = [path], path.parent
    else:
        files = [Path(p) for p in globlib.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file()]
        root = Path(os.path.commonpath([p.parent for p in files])) if files else Path(".")
    if not files:
        raise ConfigError(f"{key}: no files match {spec!r}")
    return files, root


def _stamp(files: list[Path], root: Path) -> str:
    stamp = hashlib.sha256()
    for p in files:
        st = p.stat()
        stamp.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns};".encode())
    return stamp.hexdigest()[:12]


def _file_corpus(files: list[Path], root: Path, label: str, cfg: DataConfig, chunk_bytes: int,
                 assigned: dict[str, str], extra: tuple[str, ...]) -> FileCorpus:
    """A corpus of files under root. assigned: files (by name under root) whose split is given."""
    files = sorted(set(files), key=lambda p: p.relative_to(root).as_posix())
    val_fraction = 0.0 if "validation" in assigned.values() else cfg.validation_fraction
    test_fraction = 0.0 if "test" in assigned.values() else cfg.test_fraction
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[-40:]
    rules = hashlib.sha256(json.dumps([CORPUS_VERSION, val_fraction, test_fraction, chunk_bytes,
                                       sorted(assigned.items())]).encode()).hexdigest()[:8]
    return FileCorpus(id=f"{slug}-{_stamp(files, root)}-{rules}",
                      description=f"{label}: {len(files)} files", root=root, files=tuple(files),
                      validation_fraction=val_fraction, test_fraction=test_fraction, chunk_bytes=chunk_bytes,
                      assigned=tuple(sorted(assigned.items())), extra=extra)


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, tuple[Path, ...]]:
    """The built-in corpus's files: the standard library's Python sources (listed once per process: every corpus
    preparation and report asks)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):  # os.walk, not Path.rglob: 20x faster on the library
        subfolders[:] = [d for d in subfolders if d != "site-packages"]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return root, tuple(files)


def stdlib_prose(cache: Path | None = None) -> tuple[str, ...]:
    """The built-in corpus's English prose, by name: pydoc_data (Sphinx documentation in string literals) and any
    file of at least 4 kB whose bytes are mostly runs of English words (on CPython 3.11.7: sched.py,
    xml/sax/handler.py, xml/sax/_exceptions.py; the next file, a heavily documented module, has 0.39).
    The list is kept in the cache folder, keyed by the library's file names, sizes and times."""
    root, files = stdlib_files()
    files = sorted(files)
    path = None if cache is None else cache / f"stdlib-prose-{_stamp(files, root)}.json"
    if path is not None and path.exists():
        try:
            return tuple(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    prose = []
    for p in files:
        name = p.relative_to(root).as_posix()
        if name.startswith("pydoc_data/"):
            prose.append(name)
        elif p.stat().st_size >= 4096 and prose_share(p.read_text(encoding="utf-8", errors="replace")) >= PROSE_SHARE:
            prose.append(name)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(prose))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: classified again next time
    return tuple(sorted(prose))


@dataclass(frozen=True)
class RecordCorpus(Corpus):
    """A dataset of records with a text field (TFDS, HF datasets): its own validation and test splits where it has
    them; a split it lacks is held out of its train split by a hash of the record's index."""
    validation_fraction: float
    test_fraction: float

    def _splits(self) -> dict[str, int]:
        """{split name: number of records} of the dataset."""
        raise NotImplementedError

    def _texts(self, split: str) -> Iterator[tuple[int, str | bytes]]:
        """(index, text) of every record of the dataset's split."""
        raise NotImplementedError

    def _record_name(self, i: int) -> str:
        return f"{self.description}:{i}"

    def _own_split(self, split: str) -> str | None:
        have = self._splits()
        names = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}.get(split, (split,))
        return next((n for n in names if n in have), None)

    def documents(self, split: str) -> Iterator[str]:
        own = self._own_split(split) if split != "train" else None
        if own is not None:
            records, keep = self._texts(own), lambda i: True
        else:
            records = self._texts("train")
            val = 0.0 if self._own_split("validation") else self.validation_fraction
            test = 0.0 if self._own_split("test") else self.test_fraction
            keep = lambda i: split_by_hash(self._record_name(i), val, test) == split
        for i, text in records:
            if keep(i):
                yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


@dataclass(frozen=True)
class TfdsCorpus(RecordCorpus):
    name: str = ""
    data_dir: str | None = None
    text_column: str = ""

    def _record_name(self, i: int) -> str:
        return f"{self.name}:{i}"

    def _builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder(self.name, data_dir=self.data_dir)

    def _splits(self) -> dict[str, int]:
        return {name: info.num_examples for name, info in self._builder().info.splits.items()}

    def _text_key(self) -> str:
        import tensorflow_datasets as tfds

        features = self._builder().info.features
        keys = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
        return _text_column(self.text_column, keys, list(features), f"tfds:{self.name}")

    def _texts(self, split: str) -> Iterator[tuple[int, str | bytes]]:
        import tensorflow_datasets as tfds

        key = self._text_key()
        source = tfds.data_source(self.name, split=split, data_dir=self.data_dir)
        for i in range(len(source)):
            yield i, source[i][key]


def _text_column(chosen: str, text_keys: list[str], all_keys: list[str], what: str) -> str:
    """data.text_column if given (it must exist), else "text", else the dataset's only text column."""
    if chosen:
        if chosen not in all_keys:
            raise ConfigError(f"data.text_column: {what} has no column {chosen!r} (it has {', '.join(all_keys)})")
        return chosen
    if "text" in text_keys:
        return "text"
    if len(text_keys) == 1:
        return text_keys[0]
    raise ConfigError(f"data.text_column: {what} has " + (f"several text columns ({', '.join(text_keys)}); name one"
                      if text_keys else f"no text column (it has {', '.join(all_keys)})"))


HF_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text", ".csv": "csv"}


@functools.lru_cache(maxsize=4)
def load_hf(spec: str, name: str = ""):
    """An HF `datasets` DatasetDict for data.corpus = hf:SPEC: a directory written by save_to_disk, local
    parquet/jsonl/json/text/csv files (a file, directory or glob), or a hub id (needs network or the HF cache).
    A one-line ConfigError when it cannot be loaded."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.corpus: hf: corpora need HF datasets (pip install 'jscale[hf]')") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    path = Path(os.path.expanduser(spec))
    try:
        if path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(path))
        elif path.exists() or any(ch in spec for ch in "*?["):
            files = sorted(p for p in (path.rglob("*") if path.is_dir() else map(Path, globlib.glob(spec)))
                           if p.suffix in HF_FILE_BUILDERS) if not path.is_file() else [path]
            if not files:
                raise ConfigError(f"data.corpus: hf:{spec} holds no .parquet, .jsonl, .json, .txt or .csv file")
            kinds = {HF_FILE_BUILDERS[p.suffix] for p in files}
            if len(kinds) > 1:
                raise ConfigError(f"data.corpus: hf:{spec} mixes file kinds ({', '.join(sorted(kinds))})")
            split_of = lambda p: next((s for s in ("train", "validation", "valid", "test") if s in p.stem.lower()),
                                      "train")
            data_files: dict[str, list[str]] = {}
            for p in files:
                data_files.setdefault(split_of(p), []).append(str(p))
            if "train" not in data_files:
                raise ConfigError(f"data.corpus: hf:{spec} has no training file (one whose name lacks "
                                  f"validation/valid/test)")
            loaded = datasets.load_dataset(kinds.pop(), data_files=data_files)
        else:
            if not _online("huggingface.co"):  # the HF cache only, instead of retrying the hub for half a minute
                import huggingface_hub.constants

                datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
            loaded = datasets.load_dataset(spec, name or None)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 (datasets raises many kinds: offline, missing files, bad format)
        raise ConfigError(f"data.corpus: hf:{spec} cannot be loaded ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]})") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    if "train" not in loaded:
        raise ConfigError(f"data.corpus: hf:{spec} has no train split (it has {', '.join(loaded)})")
    return loaded


@dataclass(frozen=True)
class HfCorpus(RecordCorpus):
    spec: str = ""
    name: str = ""
    text_column: str = ""

    def _dataset(self):
        return load_hf(self.spec, self.name)

    def _splits(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._dataset().items()}

    def _text_key(self) -> str:
        train = self._dataset()["train"]
        string_keys = [k for k, f in train.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        return _text_column(self.text_column, string_keys, list(train.features), f"hf:{self.spec}")

    def _texts(self, split: str) -> Iterator[tuple[int, str | bytes]]:
        key, rows = self._text_key(), self._dataset()[split]
        for start in range(0, len(rows), 1024):
            for j, text in enumerate(rows[start:start + 1024][key]):
                yield start + j, text or ""


def _check_tfds_prepared(name: str, data_dir: str | None, download: bool = True) -> None:
    """Download and prepare a TFDS dataset that is not prepared, where the machine can; otherwise a one-line
    error, before any work."""
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
    if prepared:
        return
    where = data_dir or "TFDS's default data_dir"
    advice = (f"prepare it where there is network (tfds build {name.split('/')[0]}) and set data.tfds_data_dir to "
              f"its folder")
    if not download:
        raise ConfigError(f"data.corpus: tfds:{name} is not prepared in {where} and data.download = false; {advice}")
    if not _online():  # TFDS's own downloader retries for minutes before it gives up
        raise ConfigError(f"data.corpus: tfds:{name} is not prepared in {where} and this machine cannot reach the "
                          f"network to download it; {advice}")
    print(f"jscale: downloading and preparing tfds:{name} into {where}", file=sys.stderr, flush=True)
    try:
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"data.corpus: tfds:{name} could not be downloaded and prepared ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]}); {advice}") from None


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """Can this machine open a connection to host (by default TFDS's download mirror)? JSCALE_OFFLINE=1 says no
    without asking."""
    import socket

    if os.environ.get("JSCALE_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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


def _extra_sets(spec: str) -> list[tuple[str, str]]:
    """data.extra_eval = "NAME=GLOB,NAME=GLOB" as (name, glob) pairs."""
    pairs = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, pattern = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name.strip()) or not pattern.strip():
            raise ConfigError(f"data.extra_eval: {item!r} is not NAME=FILES (NAME a word, FILES a file or glob)")
        if name.strip() in SPLITS:
            raise ConfigError(f"data.extra_eval: {name.strip()!r} is a split's name; choose another")
        pairs.append((name.strip(), pattern.strip()))
    if len({n for n, _ in pairs}) != len(pairs):
        raise ConfigError(f"data.extra_eval: a name is given twice in {spec!r}")
    return pairs


def corpus_from_config(cfg: DataConfig) -> Corpus:
    spec = cfg.corpus
    if spec == "builtin:stdlib":
        root, files = stdlib_files()
        v = sys.version_info
        prose = dict.fromkeys(stdlib_prose(cache_root(cfg)), "prose")
        return _file_corpus(files, root, f"stdlib-py{v.major}.{v.minor}.{v.micro}", cfg, BUILTIN_CHUNK_BYTES,
                            prose, ("prose",))
    if spec.startswith("builtin:"):
        raise ConfigError(f"data.corpus: unknown built-in corpus {spec!r} (the built-in one is builtin:stdlib)")
    if spec.startswith("bin:"):  # pre-tokenized: nothing to split or tokenize (prepare opens the files)
        return Corpus(id=f"bin-{_bin_dir(cfg).name}", description=spec)
    if spec.startswith("tfds:"):
        name = spec[len("tfds:"):]
        try:
            import tensorflow_datasets  # noqa: F401  (only to say clearly that it is missing)
        except ImportError:
            raise ConfigError(f"data.corpus: {spec} needs tensorflow-datasets (pip install tensorflow-datasets)")
        data_dir = cfg.tfds_data_dir or None
        _check_tfds_prepared(name, data_dir, cfg.download)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"tfds_{name}_{data_dir or 'default'}")[-60:]
        corpus = TfdsCorpus(id=f"{slug}-v{CORPUS_VERSION}-val{cfg.validation_fraction:g}-test{cfg.test_fraction:g}"
                            f"{'-' + cfg.text_column if cfg.text_column else ''}",
                            description=spec, name=name, data_dir=data_dir, text_column=cfg.text_column,
                            validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction)
        corpus._text_key()  # a missing text column is an error before any tokenizing
        return corpus
    if spec.startswith("hf:"):
        source = spec[len("hf:"):]
        dataset = load_hf(source, cfg.hf_name)
        fingerprint = hashlib.sha256("".join(d._fingerprint for d in dataset.values()).encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"hf_{source}")[-40:]
        corpus = HfCorpus(id=f"{slug}-{fingerprint}-v{CORPUS_VERSION}-val{cfg.validation_fraction:g}"
                             f"-test{cfg.test_fraction:g}{'-' + cfg.text_column if cfg.text_column else ''}",
                          description=spec, spec=source, name=cfg.hf_name, text_column=cfg.text_column,
                          validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction)
        corpus._text_key()  # a missing text column is an error before any tokenizing
        return corpus
    files, root = _glob_files(spec, "data.corpus")
    given: list[tuple[list[Path], str]] = []
    for split in HELD_OUT:  # data.validation, data.test
        if getattr(cfg, split):
            given.append((_glob_files(getattr(cfg, split), f"data.{split}")[0], split))
    extras = _extra_sets(cfg.extra_eval)
    given += [(_glob_files(pattern, "data.extra_eval")[0], name) for name, pattern in extras]
    if given:  # names are taken relative to a folder that holds every file
        every = files + [p for paths, _ in given for p in paths]
        root = Path(os.path.commonpath([p.resolve().parent for p in every]))
        files = [p.resolve() for p in files]
    assigned: dict[str, str] = {}
    for paths, split in given:
        for p in paths:
            name = p.resolve().relative_to(root).as_posix()
            if assigned.get(name, split) != split:
                raise ConfigError(f"data.{split if split in SPLITS else 'extra_eval'}: {p} is also named for the "
                                  f"{assigned[name]} split; the splits must be disjoint")
            assigned[name] = split
    files = files + [root / name for name in assigned if root / name not in set(files)]
    chunk = CHUNK_BYTES if len(files) - len(assigned) < CHUNK_BELOW_FILES else 0
    return _file_corpus(files, root, spec, cfg, chunk, assigned, tuple(n for n, _ in extras))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers.


class ByteTokenizer:
    vocab_size = 256
    id = "bytes"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


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


class FileTokenizer:
    """Any HF `tokenizers` tokenizer.json (data.tokenizer = "file:PATH"); named in the cache by its content."""

    def __init__(self, path: str):
        from jscale.config import load_tokenizer_file

        self._tok = load_tokenizer_file(path)
        self.vocab_size = self._tok.get_vocab_size()
        self.id = f"file{_file_digest(Path(os.path.expanduser(path)))[:12]}"

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, np.uint32)

    def decode(self, ids) -> str:
        return self._tok.decode(list(map(int, ids)))


class TiktokenTokenizer:
    """tiktoken's encodings (data.tokenizer = "gpt2" or "tiktoken:NAME"); special tokens are text like any other."""

    def __init__(self, spec: str):
        from jscale.config import load_tiktoken

        self._enc = load_tiktoken(spec)
        self.vocab_size = self._enc.n_vocab
        self.id = f"tiktoken-{self._enc.name}"

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), np.uint32)

    def decode(self, ids) -> str:
        return self._enc.decode(list(map(int, ids)))


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


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)


# ---------------------------------------------------------------------------------------------------------------
# Tokenized corpora on disk, and the windows drawn from them.

DEDUP_MIN_TOKENS = 64  # evaluation windows at least this long are dropped when found verbatim in the train split


@dataclass
class TokenizedCorpus:
    splits: dict[str, np.ndarray]  # split name -> memory-mapped token ids, (n_tokens,)
    meta: dict
    path: Path | None = None  # the cache folder (for the evaluation windows' duplicate check)

    @property
    def train(self) -> np.ndarray:
        return self.splits["train"]

    @property
    def validation(self) -> np.ndarray:
        return self.splits["validation"]

    @property
    def test(self) -> np.ndarray:
        return self.splits["test"]

    @property
    def eval_sets(self) -> tuple[str, ...]:
        """Every split but train: validation, test, then the extra evaluation sets."""
        return tuple(s for s in self.splits if s != "train")

    def bytes_per_token(self, split: str) -> float:
        return self.meta[f"{split}_bytes"] / max(len(self.splits[split]), 1)

    @property
    def test_bytes_per_token(self) -> float:
        return self.bytes_per_token("test")

    def window_capacity(self, n_ctx: int, context: int = 0) -> int:
        """How many evaluation windows the smallest held-out set holds without overlapping."""
        return min(len(self.splits[s]) // (context + n_ctx + 1) for s in self.eval_sets)

    def check_fits(self, n_ctx: int, max_train_tokens: int, context: int = 0, eval_windows: int = 0) -> None:
        """eval_windows: the count asked for explicitly (0: sized from data.eval_tokens, capped to what fits)."""
        if max_train_tokens > len(self.train):
            raise ConfigError(f"data.max_train_tokens: {max_train_tokens} tokens is more than the "
                              f"{len(self.train)} tokens of {self.meta['corpus']}'s train split")
        if len(self.train) < n_ctx + 1:
            raise ConfigError(f"model.n_ctx: {n_ctx} is longer than the {len(self.train)} training tokens of "
                              f"{self.meta['corpus']}")
        if eval_windows and eval_windows > self.window_capacity(n_ctx, context):
            raise ConfigError(f"data.eval_windows: {eval_windows} windows of {context + n_ctx + 1} tokens do not fit "
                              f"in {self.meta['corpus']}'s held-out sets without overlapping (at most "
                              f"{self.window_capacity(n_ctx, context)}); lower it, or leave it 0 to size it from "
                              f"data.eval_tokens and the splits")
        for split in self.eval_sets:
            if len(self.splits[split]) < context + n_ctx + 1:
                key = "model.eval_mem_len" if context else "model.n_ctx"
                raise ConfigError(f"{key}: {context + n_ctx} tokens of context are longer than the "
                                  f"{len(self.splits[split])} tokens of {self.meta['corpus']}'s {split} split "
                                  f"(raise data.{split}_fraction or use more data)")

    def train_batch(self, seed: int, step: int, batch_size: int, n_ctx: int, max_train_tokens: int = 0,
                    consecutive: bool = False, subset_seed: int = 0, subset_chunk: int = 4096) -> np.ndarray:
        return train_batch(self.train, seed, step, batch_size, n_ctx, max_train_tokens, consecutive, subset_seed,
                           subset_chunk)

    def eval_windows(self, n_windows: int, n_ctx: int, context: int = 0, split: str = "test",
                     strict: bool = True) -> np.ndarray:
        """Evaluation windows of a held-out split, with those found verbatim in the train split left out (strict:
        fewer than n_windows left is an error; else fewer are used)."""
        starts = self._window_starts(split, n_windows, n_ctx, context, strict)
        return np.asarray(self.splits[split][starts[:, None] + np.arange(context + n_ctx + 1)], np.int32)

    def _window_starts(self, split: str, n_windows: int, n_ctx: int, context: int, strict: bool = True
                       ) -> np.ndarray:
        key = (self.meta["corpus_id"], self.meta["tokenizer"], split, n_windows, n_ctx, context)
        cached = _WINDOWS.get(key)
        if cached is not None:
            return cached
        path = None if self.path is None else self.path / f"windows-{split}-{n_windows}-{n_ctx}-{context}.npy"
        if path is not None and path.exists():
            try:
                starts = np.load(path)
            except (OSError, ValueError):
                starts = None
        else:
            starts = None
        if starts is None:
            starts = window_starts(self.splits[split], n_windows, n_ctx, context,
                                   self.train if n_ctx + 1 >= DEDUP_MIN_TOKENS else None)
            if len(starts) < n_windows and strict:
                raise ConfigError(f"data.eval_windows: the {split} split of {self.meta['corpus']} holds only "
                                  f"{len(starts)} distinct windows of {n_ctx + 1} tokens not found verbatim in the "
                                  f"train split, fewer than {n_windows}; lower data.eval_windows or use more data")
            if path is not None:
                try:
                    tmp = path.with_name(f".{path.name}.{os.getpid()}")
                    with open(tmp, "wb") as f:
                        np.save(f, starts)
                    os.replace(tmp, path)
                except OSError:
                    pass  # a read-only cache: the windows are recomputed next time
        _WINDOWS[key] = starts
        return starts


_WINDOWS: dict[tuple, np.ndarray] = {}


def subset_pieces(n_tokens: int, D: int, chunk: int, subset_seed: int) -> np.ndarray:
    """The pieces of the train split that make up a subset of D tokens, (n_pieces, 2) of (start, length).

    The split is cut into chunks of `chunk` tokens, shuffled by subset_seed; the subset is the first D tokens of
    the chunks in that order. So it is spread over the whole split, a pure function of (subset_seed, D), and
    nested: the pieces of a smaller D are a prefix of a larger D's. D = 0 is the whole split."""
    if D == 0 or D >= n_tokens:
        return np.array([[0, n_tokens]], np.int64)
    n_chunks = -(-n_tokens // chunk)
    order = np.random.default_rng([subset_seed, 0x5EB5E7]).permutation(n_chunks)
    starts = order.astype(np.int64) * chunk
    lengths = np.minimum(chunk, n_tokens - starts)
    used = np.searchsorted(np.cumsum(lengths), D) + 1  # chunks up to the one that reaches D
    starts, lengths = starts[:used], lengths[:used].copy()
    lengths[-1] -= lengths.sum() - D
    return np.stack([starts, lengths], axis=1)


@functools.lru_cache(maxsize=64)
def _pieces(n_tokens: int, D: int, chunk: int, subset_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """subset_pieces as (start of each piece in the split, where each piece starts in the subset)."""
    pieces = subset_pieces(n_tokens, D, chunk, subset_seed)
    offsets = np.concatenate([[0], np.cumsum(pieces[:, 1])[:-1]])
    return pieces[:, 0], offsets


def subset_tokens(tokens: np.ndarray, D: int, chunk: int = 4096, subset_seed: int = 0) -> np.ndarray:
    """The D tokens of a subset, in subset order (for tests and inspection; batches gather them lazily)."""
    pieces = subset_pieces(len(tokens), D, chunk, subset_seed)
    return np.concatenate([np.asarray(tokens[s:s + n]) for s, n in pieces])


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, n_ctx: int, max_train_tokens: int = 0,
                consecutive: bool = False, subset_seed: int = 0, subset_chunk: int = 4096) -> np.ndarray:
    """Windows of n_ctx + 1 tokens, (batch_size, n_ctx + 1) int32: a pure function of (seed, step).

    They are read from the training subset (subset_pieces: max_train_tokens tokens in random chunks, all of the
    split when 0), taken as one sequence. Random windows; or, with consecutive=True (Transformer-XL), row b reads
    its own stream segment by segment: the stream starts at a random offset drawn from (seed, b) and step k reads
    its k-th segment (wrapping around at the end).
    """
    limit = len(tokens) if max_train_tokens == 0 else min(max_train_tokens, len(tokens))
    if consecutive:
        starts_B = (_stream_offsets(seed, batch_size, limit - n_ctx) + step * n_ctx) % (limit - n_ctx)
    else:
        starts_B = np.random.default_rng([seed, step]).integers(0, limit - n_ctx, size=batch_size)
    index_BxT = starts_B[:, None] + np.arange(n_ctx + 1)  # positions in the subset
    if limit < len(tokens):
        piece_starts, offsets = _pieces(len(tokens), limit, subset_chunk, subset_seed)
        piece_BxT = np.searchsorted(offsets, index_BxT, side="right") - 1
        index_BxT = piece_starts[piece_BxT] + (index_BxT - offsets[piece_BxT])
    return np.asarray(tokens[index_BxT], np.int32)


@functools.lru_cache(maxsize=64)
def _stream_offsets(seed: int, batch_size: int, span: int) -> np.ndarray:
    """Where each batch row's token stream starts: drawn from (seed, row), the same at every step."""
    offsets_B = np.array([np.random.default_rng([seed, b]).integers(0, span) for b in range(batch_size)])
    offsets_B.flags.writeable = False
    return offsets_B


_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2^64
_HASH_BASE_INV = np.uint64(pow(int(_HASH_BASE), -1, 2**64))


def window_hashes(tokens: np.ndarray, length: int, block: int = 1 << 22) -> np.ndarray:
    """A polynomial hash (modulo 2^64) of tokens[s:s + length] for every start s.

    With prefix sums S[i] = sum_{j<i} (t_j + 1) b^-j, the window at s hashes to b^(s+length-1) (S[s+length] - S[s])
    = sum_j (t_{s+j} + 1) b^(length-1-j): the same value wherever the window sits. Computed block by block, so the
    memory stays O(block) for a split of any size."""
    n = len(tokens) - length + 1
    out = np.empty(max(n, 0), np.uint64)
    with np.errstate(over="ignore"):
        base_pow_len = np.uint64(pow(int(_HASH_BASE), length - 1, 2**64))
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            t = np.asarray(tokens[lo:hi + length - 1]).astype(np.uint64) + np.uint64(1)
            inv_pow = np.full(len(t), _HASH_BASE_INV, np.uint64)
            inv_pow[0] = 1
            inv_pow = np.cumprod(inv_pow)  # b^-j relative to lo
            prefix = np.concatenate([[np.uint64(0)], np.cumsum(t * inv_pow)])
            fwd_pow = np.full(hi - lo, _HASH_BASE, np.uint64)
            fwd_pow[0] = 1
            fwd_pow = np.cumprod(fwd_pow)  # b^(s - lo)
            out[lo:hi] = fwd_pow * base_pow_len * (prefix[length:length + hi - lo] - prefix[:hi - lo])
    return out


def window_starts(tokens: np.ndarray, n_windows: int, n_ctx: int, context: int = 0,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """Starts of n_windows evaluation windows of context + n_ctx + 1 tokens, evenly spaced over the split.

    With exclude (the train split): twice as many evenly spaced candidates are drawn, those whose evaluated
    n_ctx + 1 tokens occur verbatim in exclude (licence headers, generated tables) are dropped, and n_windows are
    taken evenly from the rest. Fewer come back when fewer are left."""
    span = len(tokens) - context - n_ctx - 1
    if exclude is None:
        return np.linspace(0, span, n_windows).astype(np.int64)
    candidates = np.unique(np.linspace(0, span, 2 * n_windows).astype(np.int64))
    length = n_ctx + 1
    own = window_hashes(tokens[context:], length)[candidates]
    seen = np.zeros(len(own), bool)
    block = 1 << 22
    own_sorted = np.sort(own)
    for lo in range(0, max(len(exclude) - length + 1, 0), block):
        train_hashes = window_hashes(exclude[lo:lo + block + length - 1], length)
        at = np.minimum(np.searchsorted(own_sorted, train_hashes), len(own_sorted) - 1)
        seen |= np.isin(own, train_hashes[own_sorted[at] == train_hashes])  # a search into the few, not a sort
        interrupts.check()
    kept = candidates[~seen]
    if len(kept) <= n_windows:
        return kept
    return kept[np.linspace(0, len(kept) - 1, n_windows).round().astype(np.int64)]


def eval_windows(tokens: np.ndarray, n_windows: int, n_ctx: int, context: int = 0) -> np.ndarray:
    """A fixed set of held-out windows, evenly spaced over a split: (n_windows, context + n_ctx + 1) int32.

    The last n_ctx + 1 tokens of each are evaluated; the `context` tokens before them fill a memory first."""
    starts_W = window_starts(tokens, n_windows, n_ctx, context)
    return np.asarray(tokens[starts_W[:, None] + np.arange(context + n_ctx + 1)], np.int32)


# ---------------------------------------------------------------------------------------------------------------
# Pre-tokenized corpora: bin:DIR holds nanoGPT-style token files, read in place (memory-mapped, no copy).

BIN_SPLITS = {"train": ("train.bin",), "validation": ("val.bin", "validation.bin"), "test": ("test.bin",)}


def _bin_dir(cfg: DataConfig) -> Path:
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
    meta = _bin_meta(_bin_dir(cfg))
    if "vocab_size" in meta:
        v = meta["vocab_size"]
        if not isinstance(v, int) or v < 2:
            raise ConfigError(f"data.corpus: {_bin_dir(cfg) / 'meta.json'}: vocab_size must be an integer >= 2")
        if cfg.vocab_size not in (DataConfig.vocab_size, v):
            raise ConfigError(f"data.vocab_size: {cfg.vocab_size} contradicts meta.json's vocab_size = {v}")
        return v
    if cfg.vocab_size == DataConfig.vocab_size:
        raise ConfigError(f"data.vocab_size: give the vocabulary size of {cfg.corpus} (or put a meta.json with "
                          f"vocab_size beside its token files)")
    return cfg.vocab_size


def _open_bin(cfg: DataConfig) -> TokenizedCorpus:
    """train.bin, val.bin (or validation.bin) and test.bin of a bin: directory; without test.bin the second half
    of val.bin is the test split and the first half validation. Every token id is checked against the vocabulary."""
    path = _bin_dir(cfg)
    from jscale.config import tokenizer_vocab

    dtype = np.dtype(cfg.bin_dtype)
    vocab = tokenizer_vocab(cfg)  # meta.json / data.vocab_size, or the tokenizer file's when one decodes them
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


def cache_root(cfg: DataConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir or os.environ.get("JSCALE_CACHE", "~/.cache/jscale")))


def prepare(cfg: DataConfig) -> TokenizedCorpus:
    """Tokenize the configured corpus once into memory-mapped files, or open the cached ones (a bin: corpus is
    opened in place)."""
    if cfg.corpus.startswith("bin:"):
        return _open_bin(cfg)
    corpus = corpus_from_config(cfg)
    root = cache_root(cfg)
    tokenizer = None
    if cfg.tokenizer == "bpe":  # trained (and so loaded) only when the token files must be written
        tokenizer_id = f"bpe{cfg.vocab_size}"
    else:
        tokenizer = make_tokenizer(cfg)
        tokenizer_id = tokenizer.id
    target = root / f"{corpus.id}-{tokenizer_id}"
    if (target / "meta.json").exists():
        problem = _cache_problem(target)
        if problem is None:
            return _open_cache(target)
        print(f"jscale: token cache {target} is damaged ({problem}); rebuilding it", file=sys.stderr, flush=True)
        shutil.rmtree(target, ignore_errors=True)
    tokenizer = tokenizer or make_tokenizer(cfg, corpus, root)
    _write_token_files(corpus, tokenizer, target)
    return _open_cache(target)


def _open_cache(target: Path) -> TokenizedCorpus:
    meta = json.loads((target / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    open_split = lambda s: (np.memmap(target / f"{s}.bin", dtype=dtype, mode="r") if meta[f"{s}_tokens"]
                            else np.zeros(0, dtype))
    return TokenizedCorpus(splits={s: open_split(s) for s in meta["splits"]}, meta=meta, path=target)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _cache_problem(target: Path) -> str | None:
    """Why a token cache cannot be trusted (a file missing, cut short or changed since it was written), or None."""
    try:
        meta = json.loads((target / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in meta["splits"]:
            path = target / f"{split}.bin"
            if not path.exists():
                return f"{path.name} is missing"
            if path.stat().st_size != meta[f"{split}_tokens"] * itemsize:
                return f"{path.name} has {path.stat().st_size} bytes, not {meta[f'{split}_tokens'] * itemsize}"
            if _file_digest(path) != meta[f"sha256_{split}"]:
                return f"{path.name} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json unreadable: {e}"
    return None


def _write_token_files(corpus: Corpus, tokenizer, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    dtype = _token_dtype(tokenizer.vocab_size)
    splits = corpus.split_names()
    meta = {"corpus": corpus.description, "corpus_id": corpus.id, "tokenizer": tokenizer.id,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "splits": list(splits)}
    try:
        for split in splits:
            n_tokens = n_bytes = n_docs = 0
            with open(tmp / f"{split}.bin", "wb") as f:
                for text in corpus.documents(split):
                    interrupts.check()  # between documents: the temporary directory is removed below
                    text += DOC_SEPARATOR
                    ids = tokenizer.encode(text).astype(dtype)
                    f.write(ids.tobytes())
                    n_tokens, n_bytes, n_docs = n_tokens + len(ids), n_bytes + len(text.encode()), n_docs + 1
            meta.update({f"{split}_tokens": n_tokens, f"{split}_bytes": n_bytes, f"{split}_documents": n_docs,
                         f"sha256_{split}": _file_digest(tmp / f"{split}.bin")})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same cache first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
