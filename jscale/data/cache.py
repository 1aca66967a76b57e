"""Tokenized corpora on disk: the memory-mapped token files of each split, their checksums, and the corpus they
make (`TokenizedCorpus`: batches and evaluation windows drawn from them).

A corpus tokenized once is cached under `cache_dir/<corpus>-<tokenizer>/` as one `<split>.bin` per split (raw uint8,
uint16 or uint32) with meta.json (sizes and SHA-256 per split), written to a temporary directory and renamed into
place, so a killed process never leaves a half-written cache; a cache cut short or changed is found by its sizes
and checksums and rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jscale import interrupts
from jscale.config import DataConfig
from jscale.data.batches import DEDUP_MIN_TOKENS, train_batch, window_starts_many
from jscale.data.tokenizers import end_of_text, token_dtype
from jscale.errors import ConfigError
from jscale.files import file_digest

DOC_SEPARATOR = "\n"  # ends each document where the tokenizer has no end-of-text token of its own
BATCH_CHARS = 1 << 23  # documents are encoded in batches of about this much text (on every core), then written


def cache_root(cfg: DataConfig) -> Path:
    return Path(os.path.expanduser(cfg.cache_dir or os.environ.get("JSCALE_CACHE", "~/.cache/jscale")))


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

    def window_capacity(self, n_ctx: int, context: int = 0, split: str | None = None) -> int:
        """How many evaluation windows a held-out set (by default the smallest) holds without overlapping."""
        sets = self.eval_sets if split is None else (split,)
        return min(len(self.splits[s]) // (context + n_ctx + 1) for s in sets)

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

    def window_blocks(self, n_windows: int, n_ctx: int, context: int = 0, split: str = "test",
                      strict: bool = True) -> np.ndarray:
        """Which document each evaluation window comes from (the one holding its first evaluated token), (W,)
        int32: windows of one document are correlated (lag-1 correlation 0.39 on the built-in corpus), so intervals
        resample documents, not windows (jscale.noise). A corpus without document boundaries (bin:) is cut into
        blocks of BLOCK_TOKENS tokens instead."""
        starts = self._window_starts(split, n_windows, n_ctx, context, strict) + context
        docs = self.document_starts(split)
        if docs is None:
            return (starts // BLOCK_TOKENS).astype(np.int32)
        return (np.searchsorted(docs, starts, side="right") - 1).astype(np.int32)

    def document_starts(self, split: str) -> np.ndarray | None:
        """Where each document of a split begins (token offsets), or None where the corpus has no documents."""
        path = None if self.path is None else self.path / f"{split}.docs.npy"
        if path is None or not path.exists():
            return None
        return np.load(path)

    def prepare_windows(self, requests: list[tuple[str, int, int, int]]) -> None:
        """Choose the evaluation windows of several (split, n_windows, n_ctx, context) at once (every set a run
        evaluates): one pass over the train split per window length finds the windows that occur verbatim in it,
        instead of one pass per set. Kept in memory and in the cache folder; eval_windows then reads them."""
        todo = []
        for split, n_windows, n_ctx, context in requests:
            key = (self.meta["corpus_id"], self.meta["tokenizer"], split, n_windows, n_ctx, context)
            if key in _WINDOWS:
                continue
            path = self._windows_path(split, n_windows, n_ctx, context)
            if path is not None and path.exists():
                try:
                    _WINDOWS[key] = np.load(path)
                    continue
                except (OSError, ValueError):
                    pass
            todo.append((key, path, split, n_windows, n_ctx, context))
        for dedup in (False, True):  # windows too short to deduplicate need no pass over train
            group = [t for t in todo if (t[4] + 1 >= DEDUP_MIN_TOKENS) == dedup]
            if not group:
                continue
            found = window_starts_many([(self.splits[split], n, n_ctx, context) for _, _, split, n, n_ctx, context
                                        in group], self.train if dedup else None)
            for (key, path, *_), starts in zip(group, found):
                _WINDOWS[key] = starts
                if path is not None:
                    try:
                        tmp = path.with_name(f".{path.name}.{os.getpid()}")
                        with open(tmp, "wb") as f:
                            np.save(f, starts)
                        os.replace(tmp, path)
                    except OSError:
                        pass  # a read-only cache: the windows are recomputed next time

    def _windows_path(self, split: str, n_windows: int, n_ctx: int, context: int) -> Path | None:
        return None if self.path is None else self.path / f"windows-{split}-{n_windows}-{n_ctx}-{context}.npy"

    def _window_starts(self, split: str, n_windows: int, n_ctx: int, context: int, strict: bool = True
                       ) -> np.ndarray:
        self.prepare_windows([(split, n_windows, n_ctx, context)])
        starts = _WINDOWS[(self.meta["corpus_id"], self.meta["tokenizer"], split, n_windows, n_ctx, context)]
        if len(starts) < n_windows and strict:
            raise ConfigError(f"data.eval_windows: the {split} split of {self.meta['corpus']} holds only "
                              f"{len(starts)} distinct windows of {n_ctx + 1} tokens not found verbatim in the "
                              f"train split, fewer than {n_windows}; lower data.eval_windows or use more data")
        return starts


_WINDOWS: dict[tuple, np.ndarray] = {}
BLOCK_TOKENS = 1 << 14  # a corpus without document boundaries (bin:) is resampled in blocks of this many tokens


def open_cache(target: Path) -> TokenizedCorpus:
    meta = json.loads((target / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    open_split = lambda s: (np.memmap(target / f"{s}.bin", dtype=dtype, mode="r") if meta[f"{s}_tokens"]
                            else np.zeros(0, dtype))
    return TokenizedCorpus(splits={s: open_split(s) for s in meta["splits"]}, meta=meta, path=target)


def cache_problem(target: Path) -> str | None:
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
            if file_digest(path) != meta[f"sha256_{split}"]:
                return f"{path.name} does not match its checksum"
            docs = target / f"{split}.docs.npy"
            if f"sha256_{split}_docs" not in meta:
                return "written by an earlier jscale, without document offsets"
            if not docs.exists() or file_digest(docs) != meta[f"sha256_{split}_docs"]:
                return f"{docs.name} is missing or does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json unreadable: {e}"
    return None


def _batches(documents, max_chars: int = BATCH_CHARS):
    """Lists of consecutive documents of about max_chars characters in all."""
    batch, size = [], 0
    for text in documents:
        batch.append(text)
        size += len(text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def cache_name(corpus_id: str, tokenizer) -> str:
    """The cache folder of a corpus tokenized by tokenizer (an object, or a "bpeV" id for a BPE not yet trained,
    which has no end-of-text token): documents that end with the tokenizer's own end-of-text token are marked."""
    tokenizer_id = tokenizer if isinstance(tokenizer, str) else tokenizer.id
    eot = None if isinstance(tokenizer, str) else end_of_text(tokenizer)
    return f"{corpus_id}-{tokenizer_id}" + ("" if eot is None else "-eot")


def write_token_files(corpus, tokenizer, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    dtype = token_dtype(tokenizer.vocab_size)
    splits = corpus.split_names()
    meta = {"corpus": corpus.description, "corpus_id": corpus.id, "tokenizer": tokenizer.id,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype.name, "splits": list(splits)}
    eot = end_of_text(tokenizer)  # documents end with it, as nanoGPT and Levanter do, so a model learns to emit it
    if eot is not None:
        meta["document_end"] = eot[0]
    try:
        for split in splits:
            n_tokens = n_bytes = n_docs = 0
            starts = []  # where each document begins, in tokens: the units evaluation windows are resampled by
            with open(tmp / f"{split}.bin", "wb") as f:
                for batch in _batches(corpus.documents(split)):  # streamed: one batch of text in memory at a time
                    interrupts.check()  # between batches: the temporary directory is removed below
                    texts = [t + DOC_SEPARATOR for t in batch] if eot is None else batch
                    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
                        if eot is not None:
                            ids = np.append(ids, eot[1])
                        ids = ids.astype(dtype)
                        f.write(ids.tobytes())
                        starts.append(n_tokens)
                        n_tokens, n_bytes, n_docs = n_tokens + len(ids), n_bytes + len(text.encode()), n_docs + 1
            np.save(tmp / f"{split}.docs.npy", np.asarray(starts, np.int64))
            meta.update({f"{split}_tokens": n_tokens, f"{split}_bytes": n_bytes, f"{split}_documents": n_docs,
                         f"sha256_{split}": file_digest(tmp / f"{split}.bin"),
                         f"sha256_{split}_docs": file_digest(tmp / f"{split}.docs.npy")})
        if hasattr(corpus, "largest_file_shares"):  # how much of each set its largest file is (the report reads it)
            meta.update({f"{s}_largest_file_share": round(v, 4) for s, v in corpus.largest_file_shares().items()})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same cache first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
