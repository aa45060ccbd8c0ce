"""The choice lists whose owning modules are too heavy for `rnnlm --help` to import, each written once.

The library checks against these tuples and the command line derives its option types from them
(`Literal[TOKENIZERS]`), so a new choice is added in one place. The other lists live with their
idea, in light modules: the cells in rnnlm.cells, precisions, optimisers, schedules, devices and
sampling strategies in rnnlm.config, encoding-error modes in rnnlm.fileio.
"""

from __future__ import annotations

TOKENIZERS = ("char", "word", "bpe", "unigram")  # the keys of rnnlm.tokenizers.TOKENIZER_KINDS
SCORE_FORMATS = ("tsv", "value", "jsonl", "kenlm")  # rnnlm score --format (rnnlm.formats)
LOG_BASES = ("e", "2", "10")  # rnnlm score --log-base
SAMPLE_FORMATS = ("text", "jsonl")  # rnnlm sample --format
NBEST_FORMATS = ("tsv", "kaldi")  # rnnlm rescore --format (rnnlm.rescoring)
