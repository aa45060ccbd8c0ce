"""How `rnnlm score` writes its results: tsv, value, jsonl, and KenLM's query format.

Every format writes exactly one record per input line, in input order, so that the output
can be pasted beside the input; per-token detail, where asked for, stays within the record
(jsonl keys, or tab-indented rows under a tsv/value line; KenLM's own per-word fields).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from rnnlm.choices import LOG_BASES as LOG_BASE_NAMES
from rnnlm.scoring import LineScore, Perplexity
from rnnlm.tokenizers import Tokenizer

LOG_BASES = {name: 1.0 if name == "e" else math.log(int(name)) for name in LOG_BASE_NAMES}  # the divisor of a natural log


@dataclass
class ScoreWriter:
    out: TextIO
    tokenizer: Tokenizer
    output_format: str = "tsv"
    log_base: str = "e"
    per_token: bool = False

    def __post_init__(self) -> None:
        self.divisor = LOG_BASES["10" if self.output_format == "kenlm" else self.log_base]  # KenLM prints log10

    def write(self, line: str, score: LineScore, utt_id: str | None = None) -> None:
        logprob = score.logprob / self.divisor
        token_logprobs = [value / self.divisor for value in score.token_logprobs]
        if self.output_format == "jsonl":
            record: dict[str, object] = {"text": line, "logprob": logprob, "tokens": score.tokens, "words": score.words,
                                         "chars": score.chars, "oov": score.oov}
            if utt_id is not None:
                record = {"id": utt_id, **record}
            if self.per_token:
                record["token_logprobs"] = token_logprobs
                record["pieces"] = [self.tokenizer.piece(i) for i in score.token_ids]
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        if self.output_format == "kenlm":
            words = "".join(f"{self._kenlm_surface(i)}={i} 0 {value:.6g}\t"
                            for i, value in zip(score.token_ids, token_logprobs)) if self.per_token else ""
            self.out.write(f"{words}Total: {logprob:.6g} OOV: {score.oov}\n")
            return
        prefix = f"{utt_id}\t" if utt_id is not None else ""
        text = f"\t{line}" if self.output_format == "tsv" else ""
        self.out.write(f"{prefix}{logprob:.6f}{text}\n")
        if self.per_token:
            for token_id, value in zip(score.token_ids, token_logprobs):
                self.out.write(f"\t{json.dumps(self.tokenizer.piece(token_id), ensure_ascii=False)}\t{value:.6f}\n")

    def _kenlm_surface(self, token_id: int) -> str:
        """A token's name without white space, which KenLM's surfaces never contain: the
        end-of-line token is </s>, a space is ▁ (as SentencePiece writes it), other white
        space is its code point in hex, as <U+0009> for a tab."""
        if token_id == self.tokenizer.eol_id:
            return "</s>"
        piece = self.tokenizer.piece(token_id).replace(" ", "\u2581")
        return "".join(f"<U+{ord(c):04X}>" if c.isspace() else c for c in piece)

    def write_summary(self, summary: Perplexity) -> None:
        """KenLM closes its output with the corpus perplexities; the other formats add nothing."""
        if self.output_format != "kenlm" or not summary.tokens:
            return
        report = summary.to_dict()
        self.out.write(f"Perplexity including OOVs:\t{report['ppl']:.6g}\n"
                       f"Perplexity excluding OOVs:\t{report['ppl_excluding_oov']:.6g}\n"
                       f"OOVs:\t{summary.oov}\nTokens:\t{summary.tokens}\n")


def split_utterance_ids(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """The first whitespace-separated field of each line (its id) and the rest (the text)."""
    ids, texts = [], []
    for line in lines:
        fields = line.split(maxsplit=1)
        ids.append(fields[0] if fields else "")
        texts.append(fields[1] if len(fields) > 1 else "")
    return ids, texts


def summary_line(summary: Perplexity, log_base: str, seconds: float) -> str:
    """The --summary report: totals in the chosen base, and the perplexities (base-free)."""
    report = summary.to_dict()
    base = "ln" if log_base == "e" else f"log{log_base}"
    total = -summary.nll / LOG_BASES[log_base]
    return (f"{summary.lines:,} lines, {summary.tokens:,} tokens ({summary.oov:,} OOV), {summary.words:,} words: "
            f"total {base} probability {total:.4f}, perplexity {report['ppl']:.4f} per token "
            f"({report['ppl_excluding_oov']:.4f} without OOV), {report['word_ppl']:.4f} per word, "
            f"{report['bpc']:.4f} bits per character; {summary.lines / max(seconds, 1e-9):,.0f} lines/s, "
            f"{summary.tokens / max(seconds, 1e-9):,.0f} tokens/s")
