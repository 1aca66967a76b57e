"""A larger corpus that works offline: the Python source of a pinned list of packages, prepared once as token files.

The built-in corpus (the standard library, 28 MB of train split) is too small for the gpu and full tiers: at 1,000
tokens per parameter a 4e5-parameter model would repeat it 14 times. `jscale corpus` builds a larger sibling from
PyPI packages, on a machine that can reach the package registry (or from archives already downloaded), and writes
what `data.corpus = "bin:DIR"` reads, so the machine that trains needs no network:

    jscale corpus --packages numpy==2.1.3 sympy==1.13.3 --out corpora/pypi     # pip downloads the archives
    jscale corpus --packages-file experiments/pypi-corpus.txt --archives dl/ --out corpora/pypi   # offline

Every `.py` file of every archive (wheel, sdist .tar.gz or .zip) is a document, named `archive/inner/path`; files
whose bytes are identical to one already taken (vendored copies) are left out. Documents are cut into ~16 kB pieces at
line ends and dealt to train / validation / test by a SHA-256 hash of the piece's name, as the built-in corpus is,
so each split is a mix of every package. Tokens are bytes (uint8). DIR holds train.bin, val.bin, test.bin,
meta.json (vocab_size 256, bytes_per_token 1) and manifest.json: the packages, every archive and every file taken
with its size and SHA-256, and each split's size and checksum, so two preparations from the same archives give
byte-identical splits (tests/test_corpus_packages.py builds a tiny one twice).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator


from jscale import interrupts
from jscale.data.sources import BUILTIN_CHUNK_BYTES, _chunks, split_by_hash
from jscale.errors import ConfigError, resource_error
from jscale.files import file_digest, write_atomic

ARCHIVES = (".whl", ".tar.gz", ".tgz", ".zip")
SPLIT_FILES = {"train": "train.bin", "validation": "val.bin", "test": "test.bin"}
FRACTIONS = (0.05, 0.05)  # validation, test: the built-in corpus's


def read_package_list(packages: list[str], packages_file: str | None) -> list[str]:
    """The pinned requirements, from the command line and/or a file (one per line, # comments)."""
    found = list(packages or [])
    if packages_file:
        path = Path(packages_file)
        if not path.is_file():
            raise ConfigError(f"--packages-file: {path}: file not found")
        found += [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    found = [p for p in found if p]
    if not found:
        raise ConfigError("--packages: give at least one pinned package (name==version), or --packages-file")
    loose = [p for p in found if "==" not in p]
    if loose:
        raise ConfigError(f"--packages: {loose[0]!r} is not pinned (name==version): a corpus must be reproducible")
    return found


def download(packages: list[str], into: Path) -> None:
    """pip download of each pinned package (no dependencies) into a folder; a one-line error when pip cannot."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), *packages]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ConfigError(f"--packages: pip could not download them ({last[:200]}); download the archives where "
                          f"there is network and pass their folder as --archives")


def _archive_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name inside the archive, bytes) of every .py file of a wheel, sdist or zip, in name order."""
    name = path.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    if info.filename.endswith(".py") and not info.is_dir():
                        yield info.filename, z.read(info)
        else:
            with tarfile.open(path) as t:
                for member in sorted(t.getmembers(), key=lambda m: m.name):
                    if member.isfile() and member.name.endswith(".py"):
                        yield member.name, t.extractfile(member).read()
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as e:
        raise ConfigError(f"--archives: {path}: not a readable archive ({e})") from None


def prepare_packages(packages: list[str], out: Path, archives: Path | None = None, log=print) -> dict:
    """Build the corpus into out (train.bin, val.bin, test.bin, meta.json, manifest.json); returns the manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(archives) if archives else Path(tmp) / "archives"
        if archives is None:
            folder.mkdir()
            log(f"jscale: downloading {len(packages)} pinned packages with pip")
            download(packages, folder)
        elif not folder.is_dir():
            raise ConfigError(f"--archives: {folder}: not a directory")
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(ARCHIVES))
        if not paths:
            raise ConfigError(f"--archives: {folder}: no .whl, .tar.gz or .zip archives")
        return _write(packages, paths, Path(out), log)


def _write(packages: list[str], paths: list[Path], out: Path, log) -> dict:
    """Stream every piece to its split's file in a temporary folder inside out (no split is held in memory), then
    rename the finished files into place."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".corpus.", dir=out))
    except OSError as e:
        raise resource_error(e, out, "cannot write the corpus") from None
    try:
        seen: set[str] = set()
        files, archives = [], []
        counts = {s: 0 for s in SPLIT_FILES}
        handles = {s: open(tmp / f, "wb") for s, f in SPLIT_FILES.items()}
        try:
            for path in paths:
                archives.append({"name": path.name, "bytes": path.stat().st_size, "sha256": file_digest(path)})
                for inner, raw in _archive_files(path):
                    interrupts.check()
                    digest = hashlib.sha256(raw).hexdigest()
                    if digest in seen or not raw.strip():
                        continue  # a vendored copy of a file already taken, or an empty file
                    seen.add(digest)
                    name = f"{path.name}/{inner}"
                    files.append({"path": name, "bytes": len(raw), "sha256": digest})
                    for i, piece in enumerate(_chunks(raw.decode("utf-8", errors="replace"), BUILTIN_CHUNK_BYTES)):
                        split = split_by_hash(f"{name}#{i}", *FRACTIONS)
                        handles[split].write((piece + "\n").encode())
                        counts[split] += 1
        finally:
            for h in handles.values():
                h.close()
        if not files:
            raise ConfigError("--packages: the archives hold no .py files")
        splits = {}
        for split, fname in SPLIT_FILES.items():
            size = (tmp / fname).stat().st_size
            if not size:
                raise ConfigError(f"--packages: the {split} split is empty: too little source; add packages")
            splits[split] = {"file": fname, "tokens": size, "documents": counts[split],
                             "sha256": file_digest(tmp / fname)}
        manifest = {"packages": sorted(packages), "archives": archives, "files": files, "splits": splits,
                    "rules": {"piece_bytes": BUILTIN_CHUNK_BYTES, "validation_fraction": FRACTIONS[0],
                              "test_fraction": FRACTIONS[1], "tokens": "bytes"}}
        write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1))
        write_atomic(tmp / "meta.json", json.dumps({"vocab_size": 256, "bytes_per_token": 1}))
        for name in (*SPLIT_FILES.values(), "manifest.json", "meta.json"):
            os.replace(tmp / name, out / name)
    except OSError as e:
        raise resource_error(e, out, "cannot write the corpus") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(s["tokens"] for s in splits.values())
    log(f"jscale: {out}: {len(files)} files from {len(archives)} archives, {total:,} bytes (train "
        f"{splits['train']['tokens']:,}, validation {splits['validation']['tokens']:,}, test "
        f"{splits['test']['tokens']:,}); data.corpus = \"bin:{out}\" with data.bin_dtype = \"uint8\"")
    return manifest
