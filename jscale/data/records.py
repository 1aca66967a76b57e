"""Datasets of records with a text field: `tfds:NAME` (TensorFlow Datasets through `tfds.data_source`, ArrayRecord
without TensorFlow) and `hf:SOURCE` (HF `datasets`: a `save_to_disk` folder, local parquet/jsonl/json/text/csv
files, or a hub id).

Each uses its own validation and test splits where it has them; a split it lacks is held out of its train split by
a hash of the record's index. A dataset that is not prepared is downloaded where the machine has network, else it
is a one-line error.
"""

from __future__ import annotations

import functools
import glob as globlib
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from jscale.config import DataConfig
from jscale.data.sources import CORPUS_VERSION, Corpus, split_by_hash
from jscale.errors import ConfigError


RECORD_SPLIT_RULE = "c"  # in the corpus id: held-out records chosen by a hash of their text (was: of their index)


@dataclass(frozen=True)
class RecordCorpus(Corpus):
    """A dataset of records with a text field (TFDS, HF datasets): its own validation and test splits where it has
    them; a split it lacks is held out of its train split by a hash of the record's *text*, so the same records give
    the same splits whichever way they are stored (a jsonl file, parquet, a save_to_disk folder; any path, any order)
    and a record repeated in the data is never in two splits."""
    validation_fraction: float
    test_fraction: float

    def _splits(self) -> dict[str, int]:
        """{split name: number of records} of the dataset."""
        raise NotImplementedError

    def _texts(self, split: str) -> Iterator[tuple[int, str | bytes]]:
        """(index, text) of every record of the dataset's split."""
        raise NotImplementedError

    def _own_split(self, split: str) -> str | None:
        have = self._splits()
        names = {"validation": ("validation", "valid", "val", "dev"), "test": ("test",)}.get(split, (split,))
        return next((n for n in names if n in have), None)

    def documents(self, split: str) -> Iterator[str]:
        own = self._own_split(split) if split != "train" else None
        if own is not None:
            records, keep = self._texts(own), lambda text: True
        else:
            records = self._texts("train")
            val = 0.0 if self._own_split("validation") else self.validation_fraction
            test = 0.0 if self._own_split("test") else self.test_fraction
            keep = lambda text: split_by_hash(text, val, test) == split
        for _, raw in records:
            text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
            if keep(text):
                yield text


@dataclass(frozen=True)
class TfdsCorpus(RecordCorpus):
    name: str = ""
    data_dir: str | None = None
    text_column: str = ""

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


def check_tfds_prepared(name: str, data_dir: str | None, download: bool = True) -> None:
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


def tfds_corpus(cfg: DataConfig) -> TfdsCorpus:
    """data.corpus = tfds:NAME, prepared (downloaded where it can be) and its text column found."""
    spec = cfg.corpus
    name = spec[len("tfds:"):]
    try:
        import tensorflow_datasets  # noqa: F401  (only to say clearly that it is missing)
    except ImportError:
        raise ConfigError(f"data.corpus: {spec} needs tensorflow-datasets (pip install tensorflow-datasets)")
    data_dir = cfg.tfds_data_dir or None
    check_tfds_prepared(name, data_dir, cfg.download)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"tfds_{name}_{data_dir or 'default'}")[-60:]
    corpus = TfdsCorpus(id=f"{slug}-v{CORPUS_VERSION}{RECORD_SPLIT_RULE}-val{cfg.validation_fraction:g}"
                           f"-test{cfg.test_fraction:g}{'-' + cfg.text_column if cfg.text_column else ''}",
                        description=spec, name=name, data_dir=data_dir, text_column=cfg.text_column,
                        validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction)
    corpus._text_key()  # a missing text column is an error before any tokenizing
    return corpus


def hf_corpus(cfg: DataConfig) -> HfCorpus:
    """data.corpus = hf:SOURCE, loaded and its text column found."""
    spec = cfg.corpus
    source = spec[len("hf:"):]
    dataset = load_hf(source, cfg.hf_name)
    fingerprint = hashlib.sha256("".join(d._fingerprint for d in dataset.values()).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"hf_{source}")[-40:]
    corpus = HfCorpus(id=f"{slug}-{fingerprint}-v{CORPUS_VERSION}{RECORD_SPLIT_RULE}-val{cfg.validation_fraction:g}"
                         f"-test{cfg.test_fraction:g}{'-' + cfg.text_column if cfg.text_column else ''}",
                      description=spec, spec=source, name=cfg.hf_name, text_column=cfg.text_column,
                      validation_fraction=cfg.validation_fraction, test_fraction=cfg.test_fraction)
    corpus._text_key()  # a missing text column is an error before any tokenizing
    return corpus
