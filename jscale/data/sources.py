"""Corpora as documents per split: the split rules, local text files, and the built-in corpus.

Every corpus has three disjoint splits, `train`, `validation` and `test`, plus any number of named extra evaluation
sets that no model trains on. Model selection (learning-rate pilots, early stopping, best checkpoints) reads
`validation` only; `test` is read for reporting.

- `builtin:stdlib`: every `.py` file of the running interpreter's standard library (site-packages excluded).
  Files are cut into pieces of about 16 kB (at line ends) and each piece is dealt to a split by a hash of its
  name, so every split is a representative mix of the library (no file is more than 5% of any split; tested).
  The English prose of the library (`pydoc_data/`, Sphinx-generated documentation in string literals, and files
  whose bytes are mostly runs of English words) is in no split: it is the extra evaluation set `prose`, a second
  distribution no model trains on (Kaplan et al. Fig. 8). Needs no download on any machine with Python.
- a file, directory or glob of local text files. `data.validation` / `data.test` may name files or globs that form
  those splits (wikitext's `wiki.valid.raw`); otherwise documents (files, or ~4 kB pieces of a corpus of fewer
  than 400 files) are held out by a stable hash of their name. `data.extra_eval = "NAME=GLOB,..."` adds named sets.

Datasets of records (TFDS, HF) are in `jscale.data.records`, pre-tokenized token files in `jscale.data.bins`.
"""

from __future__ import annotations

import functools
import glob as globlib
import hashlib
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from jscale.config import DataConfig
from jscale.data.cache import cache_root
from jscale.errors import ConfigError


SPLITS = ("train", "validation", "test")
HELD_OUT = ("validation", "test")
CHUNK_BYTES = 1 << 12  # a corpus of fewer than CHUNK_BELOW_FILES files is dealt to splits in pieces of this size
CHUNK_BELOW_FILES = 400
BUILTIN_CHUNK_BYTES = 1 << 14  # the built-in corpus is always dealt in pieces (each split a mix of the library)
PROSE_SHARE = 0.4  # a built-in file whose bytes are at least this share English-word runs is prose, not code
CORPUS_VERSION = 3  # bump when the split rules change: cached token files of another version are not reused
# The built-in corpus's second held-out distribution, `notes`: IDLE's change logs and notes, the licence and the
# email package's design note (English, not docstrings: no file is more than 40% of it on CPython 3.11.7).
STDLIB_NOTES = ("idlelib/NEWS.txt", "idlelib/NEWS2x.txt", "idlelib/README.txt", "idlelib/HISTORY.txt",
                "idlelib/TODO.txt", "idlelib/extend.txt", "idlelib/CREDITS.txt", "LICENSE.txt",
                "email/architecture.rst")
MAX_FILE_SHARE = 0.5  # an extra evaluation set of the built-in corpus holds at most this share of any one file


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


# Possessive word bodies (++): what follows a word can never be a lowercase letter, so giving letters back cannot
# make a match, and the regex gives the same matches without trying to (over the 1,790 library files of CPython 3.11.7:
# the same spans, in 1.4-1.9 s instead of 2.7-3.3 s; it classifies the built-in corpus on a first run).
_ENGLISH_RUN = re.compile(r"[A-Za-z][a-z]++(?:,?(?: |\\n)[A-Za-z(][a-z)]++[.,;:]?){4,}")


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
    caps: tuple[tuple[str, int], ...] = ()  # (file name, bytes): an assigned file is read only that far

    def split_names(self) -> tuple[str, ...]:
        return SPLITS + self.extra

    def _named_documents(self) -> Iterator[tuple[str, str, str]]:
        """(document name, split, text) in path order."""
        given, caps = dict(self.assigned), dict(self.caps)
        for path in self.files:
            name = path.relative_to(self.root).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            if name in caps:
                text = _head(text, caps[name])
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

    def largest_file_shares(self) -> dict[str, float]:
        """Per split, the share of its bytes from the one file that contributes most (pieces of a file count
        together): an evaluation set that is mostly one file is one sample of text, however many windows it has."""
        per_file: dict[str, dict[str, int]] = {}
        for name, split, text in self._named_documents():
            f = per_file.setdefault(split, {})
            f[name.split("#")[0]] = f.get(name.split("#")[0], 0) + len(text.encode())
        return {s: max(f.values()) / sum(f.values()) for s, f in per_file.items() if sum(f.values())}

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


def _head(text: str, n: int) -> str:
    """The first n characters of a text, cut back to a line end."""
    if len(text) <= n:
        return text
    end = text.rfind("\n", 0, n)
    return text[:end + 1 if end >= 0 else n]


def _caps(root: Path, sets: dict[str, list[str]]) -> dict[str, int]:
    """For each file of each extra set: read at most as much of it as the rest of its set holds, so that no file is
    more than MAX_FILE_SHARE of the set (pydoc's topics.py, 757 kB, would otherwise be 97% of the prose)."""
    caps = {}
    for names in sets.values():
        sizes = {n: (root / n).stat().st_size for n in names}
        for n, size in sizes.items():
            rest = sum(sizes.values()) - size
            if size > rest * MAX_FILE_SHARE / (1 - MAX_FILE_SHARE):
                caps[n] = int(0.98 * rest * MAX_FILE_SHARE / (1 - MAX_FILE_SHARE))  # (2% for cuts at line ends)
    return caps


def _file_corpus(files: list[Path], root: Path, label: str, cfg: DataConfig, chunk_bytes: int,
                 assigned: dict[str, str], extra: tuple[str, ...], caps: dict[str, int] | None = None) -> FileCorpus:
    """A corpus of files under root. assigned: files (by name under root) whose split is given; caps: bytes an
    assigned file is read to."""
    files = sorted(set(files), key=lambda p: p.relative_to(root).as_posix())
    val_fraction = 0.0 if "validation" in assigned.values() else cfg.validation_fraction
    test_fraction = 0.0 if "test" in assigned.values() else cfg.test_fraction
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[-40:]
    rules = hashlib.sha256(json.dumps([CORPUS_VERSION, val_fraction, test_fraction, chunk_bytes,
                                       sorted(assigned.items()), sorted((caps or {}).items())]).encode()
                           ).hexdigest()[:8]
    return FileCorpus(id=f"{slug}-{_stamp(files, root)}-{rules}",
                      description=f"{label}: {len(files)} files", root=root, files=tuple(files),
                      validation_fraction=val_fraction, test_fraction=test_fraction, chunk_bytes=chunk_bytes,
                      assigned=tuple(sorted(assigned.items())), extra=extra,
                      caps=tuple(sorted((caps or {}).items())))


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


def file_corpus_from_config(cfg: DataConfig) -> "FileCorpus":
    """The built-in corpus, or a corpus of local files (a file, directory or glob, with its named splits)."""
    spec = cfg.corpus
    if spec == "builtin:stdlib":
        root, files = stdlib_files()
        v = sys.version_info
        prose = list(stdlib_prose(cache_root(cfg)))
        notes = [n for n in STDLIB_NOTES if (root / n).is_file()]
        assigned = {**dict.fromkeys(prose, "prose"), **dict.fromkeys(notes, "notes")}
        return _file_corpus(list(files) + [root / n for n in notes], root, f"stdlib-py{v.major}.{v.minor}.{v.micro}",
                            cfg, BUILTIN_CHUNK_BYTES, assigned, ("prose", "notes") if notes else ("prose",),
                            _caps(root, {"prose": prose, "notes": notes}))
    if spec.startswith("builtin:"):
        raise ConfigError(f"data.corpus: unknown built-in corpus {spec!r} (the built-in one is builtin:stdlib)")
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
