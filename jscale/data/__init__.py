"""Corpora, their splits, tokenization into cached memory-mapped token files, and batches as pure functions of
(seed, step).

One module per concern:

- `sources`: the split rules (train / validation / test, plus named extra evaluation sets), local files and globs,
  the built-in corpus (`builtin:stdlib`, with its English prose as the extra set `prose`)
- `records`: datasets of records: `tfds:NAME` (ArrayRecord through `tfds.data_source`, no TensorFlow) and
  `hf:SOURCE`
- `bins`: `bin:DIR`: nanoGPT-style pre-tokenized token files, read in place
- `tokenizers`: bytes, a BPE trained on the train split, any HF tokenizer.json, tiktoken's encodings (GPT-2's)
- `cache`: the token cache on disk (files, checksums, atomic writes) and `TokenizedCorpus`
- `batches`: D-token training subsets, training batches as pure functions of (seed, step), evaluation windows
- `prepare`: `corpus_from_config`, `corpus_vocab`, the size checks, and `prepare` (tokenize once, or open the cache)

Model selection (learning-rate pilots, early stopping, best checkpoints) reads `validation` only; `test` is read
for reporting. Every name below is importable from `jscale.data` itself.
"""

from jscale.data.batches import (DEDUP_MIN_TOKENS, eval_windows, subset_pieces, subset_tokens, train_batch,
                                 window_hashes, window_starts)
from jscale.data.bins import bin_corpus_vocab, bin_vocab
from jscale.data.cache import DOC_SEPARATOR, TokenizedCorpus, cache_root
from jscale.data.prepare import check_sizes, corpus_from_config, corpus_vocab, make_tokenizer, prepare
from jscale.data.records import HfCorpus, RecordCorpus, TfdsCorpus, load_hf
from jscale.data.sources import (BUILTIN_CHUNK_BYTES, CHUNK_BELOW_FILES, CHUNK_BYTES, CORPUS_VERSION, HELD_OUT,
                                 PROSE_SHARE, SPLITS, Corpus, FileCorpus, prose_share, split_by_hash, stdlib_files,
                                 stdlib_prose)
from jscale.data.tokenizers import (BPETokenizer, ByteTokenizer, FileTokenizer, TiktokenTokenizer, end_of_text,
                                    load_tiktoken, load_tokenizer_file, tokenizer_vocab)

__all__ = [
    "DEDUP_MIN_TOKENS", "eval_windows", "subset_pieces", "subset_tokens", "train_batch", "window_hashes",
    "window_starts", "bin_corpus_vocab", "bin_vocab", "DOC_SEPARATOR", "TokenizedCorpus", "cache_root",
    "check_sizes", "corpus_from_config", "corpus_vocab", "make_tokenizer", "prepare", "HfCorpus", "RecordCorpus",
    "TfdsCorpus", "load_hf", "BUILTIN_CHUNK_BYTES", "CHUNK_BELOW_FILES", "CHUNK_BYTES", "CORPUS_VERSION",
    "HELD_OUT", "PROSE_SHARE", "SPLITS", "Corpus", "FileCorpus", "prose_share", "split_by_hash", "stdlib_files",
    "stdlib_prose", "BPETokenizer", "ByteTokenizer", "FileTokenizer", "TiktokenTokenizer", "load_tiktoken",
    "load_tokenizer_file", "tokenizer_vocab", "end_of_text",
]
