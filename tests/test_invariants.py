"""Invariants that every number the tool prints must satisfy (acceptance tests).

Scores and perplexities are checked against each other, against a direct forward pass of
the model, across batching, ordering, chunking and windowing, and through the CLI.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from conftest import EVAL_LINES, run_cli
from rnnlm.fileio import iter_text_chunks
from rnnlm.model import ModelConfig, RNNLanguageModel
from rnnlm.scoring import perplexity, score_lines

REL = 1e-5


def close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def reference_logprobs(model: RNNLanguageModel, tokenizer, stream: list[int]) -> np.ndarray:
    """log P(stream[i] | end-of-line, stream[:i]) by one plain forward pass, in float64."""
    ids = torch.tensor([[tokenizer.eol_id, *stream]], dtype=torch.long)
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    logprobs = torch.log_softmax(logits.double(), dim=-1)[0]
    return logprobs.gather(1, ids[0, 1:, None]).squeeze(1).numpy()


def expected_oov(trained, text: str) -> int:
    """Characters of `text` (newlines aside) that the training split never contains."""
    train_lines = trained.corpus_file.read_text(encoding="utf-8").splitlines()[:630]  # 700 lines, 10% held out
    alphabet = set("".join(train_lines))
    return sum(1 for c in text if c != "\n" and c not in alphabet)


def line_ids(tokenizer, line: str) -> list[int]:
    return [*tokenizer.encode(line).tolist(), tokenizer.eol_id]


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("eval") / "eval.txt"
    path.write_text("\n".join(EVAL_LINES) + "\n", encoding="utf-8")
    return path


def test_the_model_is_in_eval_mode_and_trained(trained) -> None:
    assert not trained.model.training  # dropout off: scores are deterministic
    assert trained.prepared.meta["splits"]["train"]["lines"] == 630
    train_text = "".join(trained.corpus_file.read_text(encoding="utf-8").splitlines()[:630])
    assert trained.tokenizer.vocab_size == len(set(train_text)) + 2
    history = trained.result.history
    assert history and history[-1]["val_loss"] < math.log(trained.tokenizer.vocab_size)  # learnt something


# ---------------------------------------------------------------------------------------
# (a) score sums to independent-lines perplexity; both equal a direct forward pass


def test_line_score_equals_a_direct_forward_pass(trained) -> None:
    scores = score_lines(trained.model, trained.tokenizer, EVAL_LINES, detail=True)
    for line, score in zip(EVAL_LINES, scores):
        ids = line_ids(trained.tokenizer, line)
        reference = reference_logprobs(trained.model, trained.tokenizer, ids)
        assert score.token_ids == ids
        assert score.tokens == len(ids) == len(line) + 1
        assert np.allclose(score.token_logprobs, reference, rtol=REL, atol=1e-5), line
        assert close(score.logprob, float(reference.sum())), line
        assert score.logprob < 0
        assert score.words == len(line.split()) + 1
        assert score.chars == len(line) + 1
        assert score.oov == sum(1 for i in ids if i == trained.tokenizer.unk_id)
    assert scores[4].oov == expected_oov(trained, EVAL_LINES[4]) >= 3  # '✓', '☃', '∑' at least


def test_sum_of_line_scores_equals_independent_lines_perplexity(trained, eval_file) -> None:
    scores = score_lines(trained.model, trained.tokenizer, EVAL_LINES)
    with eval_file.open("rb") as stream:  # small chunks: lines are split over many calls
        result = perplexity(trained.model, trained.tokenizer, iter_text_chunks(stream, "eval", chunk_bytes=40),
                            independent_lines=True)
    assert result.mode == "independent-lines"
    assert close(sum(s.logprob for s in scores), -result.nll)
    assert result.tokens == sum(s.tokens for s in scores) == sum(len(line) + 1 for line in EVAL_LINES)
    assert result.words == sum(len(line.split()) + 1 for line in EVAL_LINES)
    assert result.chars == sum(len(line) + 1 for line in EVAL_LINES) == len(eval_file.read_text(encoding="utf-8"))
    assert result.lines == len(EVAL_LINES)
    assert result.oov == sum(s.oov for s in scores) == expected_oov(trained, "".join(EVAL_LINES))
    report = result.to_dict()
    assert close(report["ppl"], math.exp(result.nll / result.tokens))
    assert close(report["word_ppl"], math.exp(result.nll / result.words))
    assert close(report["bpc"], result.nll / result.chars / math.log(2))


def test_cli_score_values_sum_to_cli_independent_perplexity(trained, eval_file) -> None:
    scored = run_cli("score", "--format", "value", "-m", trained.directory, eval_file)
    assert scored.returncode == 0, scored
    values = [float(v) for v in scored.stdout.splitlines()]
    assert len(values) == len(EVAL_LINES)
    measured = run_cli("perplexity", "--independent-lines", "--json", "-m", trained.directory, eval_file)
    assert measured.returncode == 0, measured
    report = json.loads(measured.stdout)
    assert report["mode"] == "independent-lines"
    assert math.isclose(sum(values), -report["nll"], rel_tol=REL)
    # and the CLI prints the library's numbers
    library = score_lines(trained.model, trained.tokenizer, EVAL_LINES)
    assert all(abs(v - s.logprob) <= 1e-6 + 1e-6 * abs(s.logprob) for v, s in zip(values, library))


# ---------------------------------------------------------------------------------------
# (b) a line's score does not depend on its batch or on the order of lines


def test_line_score_is_the_same_alone_batched_and_shuffled(trained) -> None:
    alone = [score_lines(trained.model, trained.tokenizer, [line])[0].logprob for line in EVAL_LINES]
    batched = [s.logprob for s in score_lines(trained.model, trained.tokenizer, EVAL_LINES)]
    order = list(range(len(EVAL_LINES)))
    random.Random(3).shuffle(order)
    shuffled = score_lines(trained.model, trained.tokenizer, [EVAL_LINES[i] for i in order])
    for position, index in enumerate(order):
        assert close(shuffled[position].logprob, alone[index]), EVAL_LINES[index]
    for a, b in zip(alone, batched):
        assert close(a, b)
    # repeated lines in one batch get identical scores
    twice = score_lines(trained.model, trained.tokenizer, [EVAL_LINES[0], EVAL_LINES[7], EVAL_LINES[0]])
    assert close(twice[0].logprob, twice[2].logprob) and close(twice[0].logprob, alone[0])


def test_line_scores_do_not_depend_on_window_or_batch_size(trained, monkeypatch) -> None:
    import rnnlm.scoring

    expected = [s.logprob for s in score_lines(trained.model, trained.tokenizer, EVAL_LINES)]
    # a tiny logit budget forces 8-token time windows and one-line batches
    monkeypatch.setattr(rnnlm.scoring, "LOGIT_BUDGET", 64)
    small = [s.logprob for s in score_lines(trained.model, trained.tokenizer, EVAL_LINES)]
    monkeypatch.setattr(rnnlm.scoring, "MAX_BATCH_LINES", 3)
    monkeypatch.setattr(rnnlm.scoring, "LOGIT_BUDGET", 1 << 16)
    grouped = [s.logprob for s in score_lines(trained.model, trained.tokenizer, EVAL_LINES)]
    for a, b, c in zip(expected, small, grouped):
        assert close(a, b) and close(a, c)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_batching_invariance_for_every_cell(cell: str, trained) -> None:
    torch.manual_seed(0)
    model = RNNLanguageModel(ModelConfig(vocab_size=trained.tokenizer.vocab_size, cell=cell, layers=2,
                                         embedding_size=12, hidden_size=20, dropout=0.5, tie=False)).eval()
    alone = [score_lines(model, trained.tokenizer, [line])[0].logprob for line in EVAL_LINES]
    batched = score_lines(model, trained.tokenizer, EVAL_LINES, detail=True)
    for line, a, b in zip(EVAL_LINES, alone, batched):
        assert close(a, b.logprob)
        reference = reference_logprobs(model, trained.tokenizer, line_ids(trained.tokenizer, line))
        assert close(b.logprob, float(reference.sum()))


# ---------------------------------------------------------------------------------------
# (c) next-token probabilities are a distribution at every position


def test_next_token_probabilities_sum_to_one_everywhere(trained) -> None:
    text = "".join(line + "\n" for line in EVAL_LINES)
    ids = torch.tensor([[trained.tokenizer.eol_id, *trained.tokenizer.encode(text).tolist()]])
    with torch.no_grad():
        logits = trained.model(ids).logits
    probs = torch.softmax(logits.double(), dim=-1)
    assert logits.shape == (1, ids.shape[1], trained.tokenizer.vocab_size)
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(-1), torch.ones(ids.shape[1], dtype=torch.float64), atol=1e-5, rtol=0)
    single = torch.softmax(logits.float(), dim=-1).sum(-1)  # also in the model's own precision
    assert torch.allclose(single, torch.ones_like(single), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------
# (d) log bases


def test_cli_log_base_10_and_2_are_natural_log_rescaled(trained, eval_file) -> None:
    from typer.testing import CliRunner

    from rnnlm.cli import app

    runner = CliRunner()
    outputs = {}
    for base in ("e", "2", "10"):
        result = runner.invoke(app, ["score", "--format", "jsonl", "--log-base", base, "-m", str(trained.directory),
                                     str(eval_file)])
        assert result.exit_code == 0, result.output
        outputs[base] = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in outputs["e"]] == EVAL_LINES
    for natural, two, ten in zip(outputs["e"], outputs["2"], outputs["10"]):
        assert math.isclose(ten["logprob"], natural["logprob"] / math.log(10), rel_tol=REL)
        assert math.isclose(two["logprob"], natural["logprob"] / math.log(2), rel_tol=REL)
        assert ten["tokens"] == natural["tokens"] == len(natural["text"]) + 1
        assert ten["words"] == len(natural["text"].split()) + 1
        assert ten["chars"] == len(natural["text"]) + 1
    library = score_lines(trained.model, trained.tokenizer, EVAL_LINES)
    assert all(close(r["logprob"], s.logprob) for r, s in zip(outputs["e"], library))
    assert [r["oov"] for r in outputs["e"]] == [s.oov for s in library]


def test_cli_tsv_echoes_each_line_in_input_order(trained, eval_file) -> None:
    from typer.testing import CliRunner

    from rnnlm.cli import app

    result = CliRunner().invoke(app, ["score", "-m", str(trained.directory), "--chunk-lines", "3", str(eval_file)])
    assert result.exit_code == 0, result.output
    rows = result.stdout.split("\n")
    assert rows[-1] == ""
    rows = rows[:-1]
    assert len(rows) == len(EVAL_LINES)
    library = score_lines(trained.model, trained.tokenizer, EVAL_LINES)
    for row, line, score in zip(rows, EVAL_LINES, library):
        value, text = row.split("\t", 1)
        assert text == line
        assert abs(float(value) - score.logprob) <= 1e-6 + 1e-6 * abs(score.logprob)


@pytest.mark.parametrize("content, expected", [
    (b"a cat\nthe dog", ["a cat", "the dog"]),  # no newline at the end
    (b"\n\n", ["", ""]),  # empty lines are scored too
    (b"ok\n\xffbad\n", ["ok", "\ufffdbad"]),  # --encoding-errors replace
])
def test_cli_score_writes_one_row_per_input_line(trained, tmp_path, content: bytes, expected: list[str]) -> None:
    from typer.testing import CliRunner

    from rnnlm.cli import app

    path = tmp_path / "input.txt"
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["score", "-m", str(trained.directory), "--format", "jsonl",
                                      "--encoding-errors", "replace", str(path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == expected
    library = score_lines(trained.model, trained.tokenizer, expected)
    assert all(close(r["logprob"], s.logprob) for r, s in zip(rows, library))


# ---------------------------------------------------------------------------------------
# (e) stream perplexity


@pytest.mark.parametrize("line", ["the cat sat on a mat.", EVAL_LINES[7], ""])
def test_stream_perplexity_of_one_line_equals_its_independent_score(trained, line: str) -> None:
    stream = perplexity(trained.model, trained.tokenizer, [line + "\n"])
    score = score_lines(trained.model, trained.tokenizer, [line])[0]
    assert stream.mode == "stream"
    assert stream.tokens == score.tokens
    assert close(-stream.nll, score.logprob)
    unterminated = perplexity(trained.model, trained.tokenizer, [line]) if line else stream
    assert close(unterminated.nll, stream.nll) and unterminated.tokens == stream.tokens


def test_stream_perplexity_carries_state_across_lines_and_chunks(trained, eval_file) -> None:
    text = eval_file.read_text(encoding="utf-8")
    ids = trained.tokenizer.encode(text).tolist()
    reference = -float(reference_logprobs(trained.model, trained.tokenizer, ids).sum())
    whole = perplexity(trained.model, trained.tokenizer, [text])
    with eval_file.open("rb") as stream:
        chunked = perplexity(trained.model, trained.tokenizer, iter_text_chunks(stream, "eval", chunk_bytes=24))
    for result in (whole, chunked):
        assert result.tokens == len(ids)
        assert result.chars == len(text)
        assert result.words == sum(len(line.split()) + 1 for line in EVAL_LINES)
        assert result.oov == expected_oov(trained, text)
        assert close(result.nll, reference)
    # carrying the state helps: the running stream differs from independent lines
    independent = perplexity(trained.model, trained.tokenizer, [text], independent_lines=True)
    assert abs(independent.nll - whole.nll) > 1e-4 * whole.nll

