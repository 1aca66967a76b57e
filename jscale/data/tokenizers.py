"""Tokenizers (`data.tokenizer`) and the loaders of tokenizer files and encodings.

- `bytes`: UTF-8 bytes, 256 tokens.
- `bpe`: a byte-level BPE (HF `tokenizers`) trained on a corpus's train split, `data.vocab_size` tokens, cached as JSON.
- `file:PATH`: any HF `tokenizers` tokenizer.json.
- `gpt2` (GPT-2's 50257-token BPE, as Kaplan et al.) or `tiktoken:NAME`: tiktoken's encodings.

Each has `vocab_size`, `id` (names it in the token cache), `encode(text) -> ids` and `decode(ids) -> text`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from jscale.config import DataConfig
from jscale.errors import ConfigError
from jscale.files import file_digest


def load_tokenizer_file(path: str):
    """An HF `tokenizers` tokenizer.json, or a one-line ConfigError naming the file."""
    from tokenizers import Tokenizer

    path = os.path.expanduser(path)
    if not Path(path).is_file():
        raise ConfigError(f"data.tokenizer: {path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 (tokenizers raises its own exception type for any parse problem)
        raise ConfigError(f"data.tokenizer: {path}: not a tokenizer.json ({' '.join(str(e).split())[:120]})") from None


@functools.lru_cache(maxsize=4)
def load_tiktoken(spec: str):
    """tiktoken's encoding for data.tokenizer = "gpt2" (GPT-2's 50257-token BPE, as Kaplan et al. used) or
    "tiktoken:NAME": from TIKTOKEN_CACHE_DIR, or downloaded once where there is network; else a one-line error."""
    name = "gpt2" if spec == "gpt2" else spec[len("tiktoken:"):]
    try:
        import tiktoken
    except ImportError:
        raise ConfigError(f"data.tokenizer: {spec} needs tiktoken (pip install 'jscale[gpt2]')") from None
    try:
        return tiktoken.get_encoding(name)
    except ValueError as e:  # an unknown encoding name
        raise ConfigError(f"data.tokenizer: {spec}: {' '.join(str(e).split())[:160]}") from None
    except Exception as e:  # noqa: BLE001 (no network and nothing cached: requests' or tiktoken's errors)
        raise ConfigError(f"data.tokenizer: {spec}: the encoding is not cached (TIKTOKEN_CACHE_DIR) and could not "
                          f"be downloaded ({type(e).__name__}); copy tiktoken's cache from a machine with network, "
                          f"or give its tokenizer.json as file:PATH") from None


def tokenizer_vocab(d: DataConfig) -> int:
    """The vocabulary size a text tokenizer gives: 256 for bytes, data.vocab_size for a trained BPE, a tokenizer
    file's own size (read from the file) for file:PATH, the encoding's for tiktoken (a bin: corpus's own
    vocabulary is `jscale.data.corpus_vocab`'s)."""
    if d.tokenizer == "bytes":
        return 256
    if d.tokenizer == "gpt2" or d.tokenizer.startswith("tiktoken:"):
        return load_tiktoken(d.tokenizer).n_vocab
    if d.tokenizer.startswith("file:"):
        path = d.tokenizer[len("file:"):]
        try:
            stamp = os.stat(os.path.expanduser(path)).st_mtime_ns
        except OSError:
            stamp = None  # load_tokenizer_file says what is wrong
        return _tokenizer_file_vocab(path, stamp)
    return d.vocab_size


@functools.lru_cache(maxsize=8)
def _tokenizer_file_vocab(path: str, stamp: int | None) -> int:
    """Parsed once per file version, not once per run a sweep resolves."""
    return load_tokenizer_file(path).get_vocab_size()


class ByteTokenizer:
    vocab_size = 256
    id = "bytes"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class _HFTokenizer:
    """A HuggingFace `tokenizers` Tokenizer (self._tok) as jscale uses it."""

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """The same ids as encode, on every core (the Rust library's thread pool)."""
        return [np.asarray(e.ids, np.uint32) for e in self._tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(map(int, ids)))


class BPETokenizer(_HFTokenizer):
    """Byte-level BPE (HuggingFace `tokenizers`), trained on the training split and cached as JSON."""

    def __init__(self, tokenizer, vocab_size: int):
        self._tok, self.vocab_size, self.id = tokenizer, vocab_size, f"bpe{vocab_size}"

    @classmethod
    def train_or_load(cls, corpus, vocab_size: int, cache_dir: Path) -> "BPETokenizer":
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


class FileTokenizer(_HFTokenizer):
    """Any HF `tokenizers` tokenizer.json (data.tokenizer = "file:PATH"); named in the cache by its content."""

    def __init__(self, path: str):
        self._tok = load_tokenizer_file(path)
        self.vocab_size = self._tok.get_vocab_size()
        self.id = f"file{file_digest(Path(os.path.expanduser(path)))[:12]}"


class TiktokenTokenizer:
    """tiktoken's encodings (data.tokenizer = "gpt2" or "tiktoken:NAME"); special tokens are text like any other."""

    def __init__(self, spec: str):
        self._enc = load_tiktoken(spec)
        self.vocab_size = self._enc.n_vocab
        self.id = f"tiktoken-{self._enc.name}"

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._enc.encode_ordinary(text), np.uint32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """The same ids as encode, on every core (tiktoken's thread pool)."""
        ids = self._enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
        return [np.asarray(i, np.uint32) for i in ids]

    def decode(self, ids) -> str:
        return self._enc.decode(list(map(int, ids)))


END_OF_TEXT = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")  # what tokenizers call their document end


def end_of_text(tokenizer) -> tuple[str, int] | None:
    """The tokenizer's own end-of-text token (text, id), or None where it has none (bytes, a BPE trained here)."""
    if isinstance(tokenizer, TiktokenTokenizer):
        eot = getattr(tokenizer._enc, "eot_token", None)
        return None if eot is None else (tokenizer._enc.decode([eot]), int(eot))
    if isinstance(tokenizer, FileTokenizer):
        special = {t.content: i for i, t in tokenizer._tok.get_added_tokens_decoder().items() if t.special}
        found = next((t for t in END_OF_TEXT if t in special), None)
        return None if found is None else (found, int(special[found]))
    return None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (what the ByteLevel pre-tokenizer uses)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


def hf_tokenizer_json(tokenizer) -> str | None:
    """The tokenizer as an HF tokenizer.json that encodes exactly as jscale's does: the bytes tokenizer as a
    byte-level BPE without merges (id = byte value), a trained BPE or a tokenizer file as itself; None for
    tiktoken's encodings (not tokenizer.json files)."""
    if isinstance(tokenizer, ByteTokenizer):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        tok = Tokenizer(models.BPE(vocab={c: b for b, c in _bytes_to_unicode().items()}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok.to_str()
    if isinstance(tokenizer, (BPETokenizer, FileTokenizer)):
        return tokenizer._tok.to_str()
    return None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32)
