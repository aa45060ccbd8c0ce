"""`rnnlm score` and `rnnlm perplexity` in pipelines: alignment, formats, bad input, dynamic evaluation."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys

import pytest
from conftest import EVAL_LINES, TrainedModel, cli_env, run_cli

from rnnlm.config import DynamicEvaluation
from rnnlm.scoring import perplexity, score_lines

KENLM_LINE = re.compile(r"^((?:\S+?=\d+ \d+ \S+\t)*)Total: (\S+) OOV: (\d+)$")
KENLM_WORD = re.compile(r"(\S+?)=(\d+) (\d+) (\S+)\t")


def write_lines(path, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_a_line_scores_the_same_alone_batched_shuffled_and_in_a_chunk_of_10000(trained: TrainedModel) -> None:
    rng = random.Random(3)
    corpus_lines = trained.corpus_file.read_text(encoding="utf-8").splitlines()
    chunk = [rng.choice(corpus_lines + EVAL_LINES) for _ in range(10_000)]
    alone = {line: score_lines(trained.model, trained.tokenizer, [line])[0].logprob for line in EVAL_LINES}
    in_chunk = score_lines(trained.model, trained.tokenizer, chunk + EVAL_LINES)[-len(EVAL_LINES):]
    shuffled = EVAL_LINES[:]
    rng.shuffle(shuffled)
    for line, result in [*zip(EVAL_LINES, in_chunk), *zip(shuffled, score_lines(trained.model, trained.tokenizer, shuffled))]:
        assert result.logprob == pytest.approx(alone[line], rel=1e-5, abs=1e-6)


def test_utt_id_keeps_ids_aligned_and_unscored(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts = [line for line in EVAL_LINES if line.strip()]
    ids = [f"utt{i:03d}" for i in range(len(texts))]
    write_lines(tmp_path / "nbest.txt", [f"{i} {t}" for i, t in zip(ids, texts)] + ["lonely-id"])
    result = run_cli("score", tmp_path / "nbest.txt", "-m", trained.directory, "--utt-id")
    assert result.returncode == 0, result
    rows = result.stdout.splitlines()
    assert [row.split("\t")[0] for row in rows] == ids + ["lonely-id"]
    expected = [s.logprob for s in score_lines(trained.model, trained.tokenizer, [t.lstrip() for t in texts] + [""])]
    assert [float(row.split("\t")[1]) for row in rows] == pytest.approx(expected, rel=1e-5)
    jsonl = run_cli("score", tmp_path / "nbest.txt", "-m", trained.directory, "--utt-id", "--format", "jsonl")
    assert [json.loads(row)["id"] for row in jsonl.stdout.splitlines()] == ids + ["lonely-id"]


def test_kenlm_format_parses_as_kenlm_query_output(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_lines(tmp_path / "in.txt", EVAL_LINES)
    expected = score_lines(trained.model, trained.tokenizer, EVAL_LINES, detail=True)
    for per_token in (False, True):
        args = ["--per-token"] if per_token else []
        result = run_cli("score", tmp_path / "in.txt", "-m", trained.directory, "--format", "kenlm", *args)
        assert result.returncode == 0, result
        rows = result.stdout.splitlines()
        assert len(rows) == len(EVAL_LINES) + 4
        for row, score in zip(rows, expected):
            match = KENLM_LINE.match(row)
            assert match, row
            assert float(match.group(2)) == pytest.approx(score.logprob / math.log(10), rel=1e-5, abs=1e-5)
            assert int(match.group(3)) == score.oov
            words = KENLM_WORD.findall(match.group(1))
            if per_token:
                assert [int(w[1]) for w in words] == score.token_ids
                assert sum(float(w[3]) for w in words) == pytest.approx(float(match.group(2)), rel=1e-4, abs=1e-4)
            else:
                assert words == []
        summary = dict(row.split("\t") for row in rows[-4:])
        tokens = sum(s.tokens for s in expected)
        total_log10 = sum(s.logprob for s in expected) / math.log(10)
        assert int(summary["Tokens:"]) == tokens
        assert int(summary["OOVs:"]) == sum(s.oov for s in expected)
        assert float(summary["Perplexity including OOVs:"]) == pytest.approx(10 ** (-total_log10 / tokens), rel=1e-5)


def test_kenlm_format_refuses_utterance_ids(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_lines(tmp_path / "in.txt", ["a b"])
    result = run_cli("score", tmp_path / "in.txt", "-m", trained.directory, "--format", "kenlm", "--utt-id")
    assert result.returncode == 2 and len(result.stderr_lines) == 1


def test_per_token_detail_sums_to_the_line_score(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_lines(tmp_path / "in.txt", EVAL_LINES)
    result = run_cli("score", tmp_path / "in.txt", "-m", trained.directory, "--format", "jsonl", "--per-token",
                     "--log-base", "2")
    records = [json.loads(row) for row in result.stdout.splitlines()]
    assert [r["text"] for r in records] == EVAL_LINES
    for record in records:
        assert len(record["token_logprobs"]) == len(record["pieces"]) == record["tokens"]
        assert sum(record["token_logprobs"]) == pytest.approx(record["logprob"], rel=1e-5, abs=1e-5)
    table = run_cli("score", tmp_path / "in.txt", "-m", trained.directory, "--per-token").stdout.splitlines()
    line_rows = [row for row in table if not row.startswith("\t")]
    assert [row.split("\t", 1)[1] for row in line_rows] == EVAL_LINES
    assert len(table) - len(line_rows) == sum(record["tokens"] for record in records)


def test_summary_on_stderr_matches_perplexity(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_lines(tmp_path / "in.txt", EVAL_LINES)
    result = run_cli("score", tmp_path / "in.txt", "-m", trained.directory, "--format", "value", "--summary")
    assert len(result.stdout.splitlines()) == len(EVAL_LINES)
    report = perplexity(trained.model, trained.tokenizer, [(tmp_path / "in.txt").read_text()], independent_lines=True)
    assert f"perplexity {report.to_dict()['ppl']:.4f} per token" in result.stderr
    assert f"{report.tokens:,} tokens" in result.stderr


def test_perplexity_excluding_oov_leaves_out_exactly_the_unknown_tokens(trained: TrainedModel) -> None:
    scores = score_lines(trained.model, trained.tokenizer, EVAL_LINES, detail=True)
    unknown = [(lp, tid) for s in scores for lp, tid in zip(s.token_logprobs, s.token_ids) if tid == trained.tokenizer.unk_id]
    known = [lp for s in scores for lp, tid in zip(s.token_logprobs, s.token_ids) if tid != trained.tokenizer.unk_id]
    assert unknown, "EVAL_LINES must contain characters the model has not seen"
    report = perplexity(trained.model, trained.tokenizer, ["\n".join(EVAL_LINES) + "\n"], independent_lines=True).to_dict()
    assert report["oov"] == len(unknown)
    assert report["ppl_excluding_oov"] == pytest.approx(math.exp(-sum(known) / len(known)), rel=1e-5)


def test_invalid_utf8_prints_the_lines_before_it_then_one_error(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.txt").write_bytes(b"the cat\nsat on\nbad \xff byte\nnever scored\n")
    result = run_cli("score", tmp_path / "bad.txt", "-m", trained.directory)
    assert result.returncode == 1
    assert [row.split("\t")[1] for row in result.stdout.splitlines()] == ["the cat", "sat on"]
    assert len(result.stderr_lines) == 1 and "line 3" in result.stderr and "Traceback" not in result.stderr
    replaced = run_cli("score", tmp_path / "bad.txt", "-m", trained.directory, "--encoding-errors", "replace")
    assert replaced.returncode == 0
    assert [row.split("\t")[1] for row in replaced.stdout.splitlines()] == ["the cat", "sat on", "bad \ufffd byte",
                                                                          "never scored"]


def test_binary_file_is_an_error_without_a_traceback(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "blob.bin").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(5000)))
    result = run_cli("score", tmp_path / "blob.bin", "-m", trained.directory)
    assert result.returncode == 1 and len(result.stderr_lines) == 1 and "invalid UTF-8" in result.stderr


def test_a_long_single_line_gets_one_score(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    line = ("the small red dog ran to a blue cat " * 3000).strip()  # ~108,000 characters, one line
    (tmp_path / "long.txt").write_text(line, encoding="utf-8")  # no final newline
    result = run_cli("score", tmp_path / "long.txt", "-m", trained.directory, "--format", "value")
    assert result.returncode == 0, result
    [value] = result.stdout.splitlines()
    assert float(value) == pytest.approx(score_lines(trained.model, trained.tokenizer, [line])[0].logprob, rel=1e-5)


def test_score_into_head_ends_quietly_with_success(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_lines(tmp_path / "big.txt", EVAL_LINES * 3000)
    pipeline = f"{sys.executable} -m rnnlm score {tmp_path / 'big.txt'} -m {trained.directory} --chunk-lines 64 | head -1; " \
               "exit ${PIPESTATUS[0]}"
    completed = subprocess.run(["bash", "-c", pipeline], capture_output=True, env=cli_env(), timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == b""
    assert len(completed.stdout.splitlines()) == 1


def test_unbuffered_answers_each_line_before_the_next_arrives(trained: TrainedModel) -> None:
    process = subprocess.Popen([sys.executable, "-m", "rnnlm", "score", "-m", str(trained.directory), "--unbuffered"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=cli_env())
    try:
        for line in ["the cat", "sat on a mat"]:
            process.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
            answer = process.stdout.readline().decode()  # type: ignore[union-attr]
            assert answer.rstrip("\n").split("\t")[1] == line
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        process.wait(timeout=60)
    assert process.returncode == 0


def test_dynamic_evaluation_lowers_perplexity_on_repetitive_text(trained: TrainedModel) -> None:
    from rnnlm.checkpoint import load_model

    text = "zebra zebra zebra quokka.\n" * 40  # characters the model rarely saw, in a fixed pattern
    static = perplexity(trained.model, trained.tokenizer, [text])
    adapting = load_model(trained.directory)
    dynamic = perplexity(adapting.model, adapting.tokenizer, [text], dynamic=DynamicEvaluation(lr=0.3, segment=20))
    assert dynamic.tokens == static.tokens and dynamic.mode == "dynamic-stream"
    assert dynamic.nll < 0.9 * static.nll


def test_dynamic_evaluation_refuses_independent_lines(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_lines(tmp_path / "in.txt", ["the cat"])
    result = run_cli("perplexity", tmp_path / "in.txt", "-m", trained.directory, "--dynamic", "--independent-lines")
    assert result.returncode == 1 and len(result.stderr_lines) == 1
