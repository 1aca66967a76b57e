"""Tokenizing a corpus into token files: the batched, multi-core writer (jscale.data.cache.write_token_files) against
the one-document-at-a-time loop it replaced, on the same documents and tokenizer, with identical token files.

    python benchmarks/tokenizing.py --text DIR --copies 5 --results benchmarks/RESULTS.md    # ~1 GB from a 205 MB DIR
    python benchmarks/tokenizing.py --smoke                                                 # seconds, any machine

The corpus is every file under --text (e.g. the `train/` folder of `jscale corpus`'s output decoded, or any folder of
text), cut into 16 kB documents, repeated --copies times (say so when you report it: repeated text is not new text).
The tokenizer is a byte-level BPE of --vocab tokens trained here on the first 20 MB (HF tokenizers), given to jscale as
a tokenizer.json (data.tokenizer = "file:PATH"), so no network is needed. Both writers run one after another in this
process, each timed end to end (reading, encoding, writing); the token files are compared byte for byte.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jscale.data.cache import DOC_SEPARATOR, write_token_files
from jscale.data.sources import Corpus, _chunks
from jscale.data.tokenizers import FileTokenizer, token_dtype

PIECE = 16_384


@dataclass(frozen=True)
class RepeatedText(Corpus):
    """Every file under a folder, cut into PIECE-character documents, `copies` times over; all of it is train."""
    folder: Path = Path(".")
    copies: int = 1
    limit: int = 0  # stop after this many characters (0: no limit)

    def split_names(self):
        return ("train",)

    def documents(self, split: str):
        seen = 0
        files = sorted(p for p in self.folder.rglob("*") if p.is_file())
        for _ in range(self.copies):
            for path in files:
                for piece in _chunks(path.read_text(errors="replace"), PIECE):
                    yield piece
                    seen += len(piece)
                    if self.limit and seen >= self.limit:
                        return


def one_at_a_time(corpus, tokenizer, target: Path) -> None:
    """The loop write_token_files replaced: encode each document alone, on one core."""
    target.mkdir(parents=True)
    dtype = token_dtype(tokenizer.vocab_size)
    with open(target / "train.bin", "wb") as f:
        for text in corpus.documents("train"):
            f.write(tokenizer.encode(text + DOC_SEPARATOR).astype(dtype).tobytes())


def train_tokenizer(corpus, vocab: int, path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    docs, size = [], 0
    for text in corpus.documents("train"):
        docs.append(text)
        size += len(text)
        if size > 20_000_000:
            break
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, help="a folder of text files")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--smoke", action="store_true", help="2 MB of the interpreter's standard library")
    ap.add_argument("--results", help="Markdown file to append the table to")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="jscale-tokenize-"))
    try:
        if args.smoke:
            import sysconfig

            folder, limit, vocab = Path(sysconfig.get_paths()["stdlib"]) / "json", 2_000_000, 512
        elif args.text is None or not args.text.is_dir():
            print(f"tokenizing.py: --text: {args.text} is not a folder", file=sys.stderr)
            return 2
        else:
            folder, limit, vocab = args.text, 0, args.vocab
        corpus = RepeatedText(id=f"bench-{folder.name}", description=str(folder), folder=folder,
                              copies=1 if args.smoke else args.copies, limit=limit)
        train_tokenizer(corpus, vocab, work / "tokenizer.json")
        tokenizer = FileTokenizer(str(work / "tokenizer.json"))
        n_chars = sum(len(t) for t in corpus.documents("train"))
        timings = {}
        for name, write in (("one document at a time (before)", lambda t: one_at_a_time(corpus, tokenizer, t)),
                            ("batched, every core (write_token_files)",
                             lambda t: write_token_files(corpus, tokenizer, t))):
            target = work / name.split()[0]
            start = time.perf_counter()
            write(target)
            timings[name] = time.perf_counter() - start
        a = np.fromfile(work / "one" / "train.bin", dtype=token_dtype(tokenizer.vocab_size))
        b = np.fromfile(work / "batched," / "train.bin", dtype=token_dtype(tokenizer.vocab_size))
        same = np.array_equal(a, b)
        lines = [f"\n## benchmarks/tokenizing.py: {platform.machine()}, {os.cpu_count()} cores, "
                 f"{datetime.date.today().isoformat()}\n\n",
                 f"{n_chars / 1e6:,.1f} M characters ({folder}{'' if args.smoke else f', {args.copies} copies'}), "
                 f"{len(a):,} tokens, byte-level BPE of {vocab} tokens; token files identical: {same}\n\n",
                 "| writer | seconds | M characters/s |\n", "|---|---|---|\n"]
        lines += [f"| {name} | {s:.1f} | {n_chars / 1e6 / s:.2f} |\n" for name, s in timings.items()]
        print("".join(lines))
        if args.results:
            with open(args.results, "a") as f:
                f.write("".join(lines))
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
