"""`rnnlm rescore` and several models at once: the score formula, ranks, streaming, bad input, weights."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from conftest import WORDS, TrainedModel, make_corpus, run_cli, train_small_model

from rnnlm.combination import Combination, combined_line_scores, parse_weights
from rnnlm.errors import InvalidOption
from rnnlm.rescoring import Hypothesis, RescoreSettings, group_utterances, rescore
from rnnlm.scoring import score_lines
from rnnlm.tokenizers import count_words


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A second, smaller character GRU on other text, so its scores differ from the session model's."""
    return train_small_model(tmp_path_factory.mktemp("second"), lines=300, text_seed=7,
                             model=dict(cell="gru", layers=1, embedding_size=8, hidden_size=16, dropout=0.0, tie=False),
                             training=dict(epochs=2, bptt=16, warmup_steps=5, random_seed=3))


def nbest_lines(utterances: int, per_utterance: int, seed: int = 0) -> list[str]:
    """utt-id<TAB>first-pass<TAB>hypothesis lines with distinct first-pass scores and an empty hypothesis."""
    rng = random.Random(seed)
    lines = []
    for u in range(utterances):
        for h in range(per_utterance):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0 if h == 2 else 1, 7)))
            lines.append(f"utt{u:02d}\t{-rng.uniform(0, 30):.4f}\t{words}")
    return lines


def write_nbest(path, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_nbest_and_texts(directory, seed: int) -> Path:  # type: ignore[no-untyped-def]
    """nbest.tsv (4 utterances x 5 hypotheses) and texts.txt (its hypotheses alone) in `directory`; the texts' path."""
    lines = nbest_lines(4, 5, seed=seed)
    write_nbest(directory / "nbest.tsv", lines)
    texts = directory / "texts.txt"
    write_nbest(texts, [line.split("\t", 2)[2] for line in lines])
    return texts


def test_all_rows_follow_the_formula_and_ranks_follow_the_scores(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = nbest_lines(6, 5)
    write_nbest(tmp_path / "nbest.tsv", lines)
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--all", "--lm-weight", "0.7",
                     "--word-penalty", "0.5")
    assert result.returncode == 0, result
    rows = [row.split("\t", 5) for row in result.stdout.splitlines()]
    texts = [line.split("\t", 2)[2] for line in lines]
    assert [(r[0], r[5]) for r in rows] == [(line.split("\t")[0], text) for line, text in zip(lines, texts)]
    lm = [s.logprob for s in score_lines(trained.model, trained.tokenizer, texts)]
    for row, line, text, logprob in zip(rows, lines, texts, lm):
        assert float(row[2]) == pytest.approx(logprob, abs=2e-6)
        expected = float(line.split("\t")[1]) + 0.7 * logprob + 0.5 * count_words(text)
        assert float(row[3]) == pytest.approx(expected, abs=1e-5)
    for utt in {r[0] for r in rows}:
        group = [r for r in rows if r[0] == utt]
        by_rank = sorted(group, key=lambda r: int(r[4]))
        assert [int(r[4]) for r in by_rank] == list(range(1, len(group) + 1))
        assert [float(r[3]) for r in by_rank] == sorted((float(r[3]) for r in group), reverse=True)


def test_best_is_printed_per_utterance_in_input_order(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = nbest_lines(5, 4, seed=1)
    write_nbest(tmp_path / "nbest.tsv", lines)
    best = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory)
    every = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--all")
    winners = [f"{r[0]}\t{r[5]}" for r in (row.split("\t", 5) for row in every.stdout.splitlines()) if r[4] == "1"]
    assert best.stdout.splitlines() == winners
    assert [w.split("\t")[0] for w in winners] == [f"utt{u:02d}" for u in range(5)]


def test_lm_weight_zero_keeps_the_first_pass_best(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = nbest_lines(8, 6, seed=2)
    write_nbest(tmp_path / "nbest.tsv", lines)
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--lm-weight", "0")
    assert result.returncode == 0, result
    first_pass_best = {}
    for line in lines:
        utt, score, text = line.split("\t", 2)
        if utt not in first_pass_best or float(score) > first_pass_best[utt][0]:
            first_pass_best[utt] = (float(score), text)
    assert result.stdout.splitlines() == [f"{utt}\t{text}" for utt, (_, text) in first_pass_best.items()]


def test_batches_across_utterances_do_not_change_the_results(trained: TrainedModel) -> None:
    hypotheses = [Hypothesis(*line.split("\t", 2)) for line in nbest_lines(7, 3, seed=3)]
    for h in hypotheses:
        h.first_pass = float(h.first_pass)
    calls: list[int] = []

    def logprobs(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        return [s.logprob for s in score_lines(trained.model, trained.tokenizer, texts)]

    settings = RescoreSettings(0.5, -0.2)
    one_batch = list(rescore(group_utterances(enumerate(hypotheses, 1), "x"), logprobs, settings))
    small = list(rescore(group_utterances(enumerate(hypotheses, 1), "x"), logprobs, settings, batch_hypotheses=4))
    assert calls == [21, 6, 6, 6, 3]  # whole utterances, several per batch
    assert [[r.rank for r in group] for group in small] == [[r.rank for r in group] for group in one_batch]
    assert [r.score for group in small for r in group] == pytest.approx([r.score for group in one_batch for r in group],
                                                                      abs=1e-6)


@pytest.mark.parametrize("bad, problem", [
    ("utt01\t-3.0", "line 4"),
    ("utt01\tnot-a-number\tthe cat", "line 4"),
    ("utt01\tnan\tthe cat", "line 4"),
    ("\t-1.0\tthe cat", "line 4"),
])
def test_a_malformed_line_is_named_after_the_complete_utterances_before_it(
        trained: TrainedModel, tmp_path, bad: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    lines = ["utt00\t-1.0\tthe cat", "utt00\t-2.0\ta dog", "utt01\t-1.5\tsat", bad, "utt02\t-1.0\tmat"]
    write_nbest(tmp_path / "nbest.tsv", lines)
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory)
    assert result.returncode == 1, result
    assert len(result.stderr_lines) == 1 and problem in result.stderr and "Traceback" not in result.stderr
    assert [row.split("\t")[0] for row in result.stdout.splitlines()] == ["utt00"]


def test_an_utterance_split_by_another_is_an_error(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_nbest(tmp_path / "nbest.tsv", ["a\t-1\tthe", "b\t-1\tcat", "a\t-2\tdog"])
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory)
    assert result.returncode == 1 and "line 3" in result.stderr and "consecutive" in result.stderr
    assert len(result.stderr_lines) == 1


def test_empty_hypothesis_and_empty_input(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_nbest(tmp_path / "nbest.tsv", ["u\t0\t", "u\t-50\tthe cat"])
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--all")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0].split("\t")[5] == ""
    empty = run_cli("rescore", "-", "-m", trained.directory, input=b"")
    assert empty.returncode == 0 and empty.stdout == ""


def test_weights_one_and_zero_equal_the_first_model_alone(trained: TrainedModel, second: TrainedModel,
                                                           tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts = write_nbest_and_texts(tmp_path, seed=4)
    pairs = [("score", texts, "--format", "jsonl"), ("perplexity", texts, "--json"),
             ("perplexity", texts, "--json", "--independent-lines"), ("rescore", tmp_path / "nbest.tsv", "--all")]
    for command, path, *options in pairs:
        alone = run_cli(command, path, "-m", trained.directory, *options)
        both = run_cli(command, path, "-m", trained.directory, "-m", second.directory, "--weights", "1,0", *options)
        assert alone.returncode == 0, alone
        assert both.stdout == alone.stdout, command
        other = run_cli(command, path, "-m", trained.directory, "-m", second.directory, "--weights", "0,1", *options)
        assert other.stdout != alone.stdout


def test_default_weights_average_the_models(trained: TrainedModel, second: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts = ["the cat sat", "", "日本 語 🙂", "a dog ran to the mat."]
    write_nbest(tmp_path / "texts.txt", texts)
    result = run_cli("score", tmp_path / "texts.txt", "-m", trained.directory, "-m", second.directory,
                     "--format", "value")
    a = score_lines(trained.model, trained.tokenizer, texts)
    b = score_lines(second.model, second.tokenizer, texts)
    expected = [(x.logprob + y.logprob) / 2 for x, y in zip(a, b)]
    assert [float(v) for v in result.stdout.splitlines()] == pytest.approx(expected, abs=2e-6)
    combined = combined_line_scores(Combination([trained.loaded, second.loaded], [0.25, 0.75]), texts)
    assert [s.logprob for s in combined] == pytest.approx([0.25 * x.logprob + 0.75 * y.logprob for x, y in zip(a, b)])
    report = json.loads(run_cli("perplexity", tmp_path / "texts.txt", "-m", trained.directory, "-m", second.directory,
                                "--json", "--independent-lines").stdout)
    assert report["nll"] == pytest.approx(-sum(expected), rel=1e-6)


@pytest.mark.parametrize("weights", ["1", "1,2,3", "a,b", "-1,2", "0,0", "inf,1"])
def test_bad_weights_are_bad_usage(trained: TrainedModel, second: TrainedModel, tmp_path, weights: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOption) as raised:
        parse_weights(weights, 2)
    assert raised.value.argument == "weights" and "--" not in str(raised.value)  # the library names arguments
    result = run_cli("score", "-", "-m", trained.directory, "-m", second.directory, "--weights", weights, input=b"x\n")
    assert result.returncode == 2 and len(result.stderr_lines) == 1, result


def test_per_token_detail_and_weights_need_one_and_several_models(trained: TrainedModel, second: TrainedModel) -> None:
    result = run_cli("score", "-", "-m", trained.directory, "-m", second.directory, "--per-token", input=b"x\n")
    assert result.returncode == 2 and len(result.stderr_lines) == 1
    alone = run_cli("score", "-", "-m", trained.directory, "--weights", "0.5", input=b"x\n")
    assert alone.returncode == 2 and "--weights" in alone.stderr and len(alone.stderr_lines) == 1


@pytest.fixture(scope="module")
def directions(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A model trained with --reverse, and a forward one trained alike on the same lines reversed."""
    base = tmp_path_factory.mktemp("directions")
    text = make_corpus(120, seed=11)
    (base / "forward.txt").write_text(text, encoding="utf-8")
    (base / "reversed.txt").write_text("".join(line[::-1] + "\n" for line in text.splitlines()), encoding="utf-8")
    common = ("--epochs", "1", "--layers", "1", "--hidden-size", "16", "--batch-size", "4", "--bptt", "16",
              "--eval-every", "20", "--precision", "fp32", "--device", "cpu", "--random-seed", "5")
    backward = run_cli("train", base / "forward.txt", "-o", base / "bwd", "--reverse", *common)
    forward = run_cli("train", base / "reversed.txt", "-o", base / "fwd", *common)
    assert backward.returncode == 0 and forward.returncode == 0, (backward, forward)
    return base / "bwd", base / "fwd"


def test_a_reverse_model_is_a_forward_model_of_the_reversed_lines(directions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.numpy import load_file

    from rnnlm.checkpoint import load_model

    bwd_dir, fwd_dir = directions
    assert json.loads((bwd_dir / "config.json").read_text())["model"]["reverse"] is True
    a, b = load_file(bwd_dir / "model.safetensors"), load_file(fwd_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert abs(a[name] - b[name]).max() <= 1e-6, name
    lines = ["the cat sat on a mat.", "", "日本 語 🙂", "x y"]
    bwd, fwd = load_model(bwd_dir), load_model(fwd_dir)
    scored = score_lines(bwd.model, bwd.tokenizer, lines)
    expected = score_lines(fwd.model, fwd.tokenizer, [line[::-1] for line in lines])
    assert [s.logprob for s in scored] == pytest.approx([s.logprob for s in expected], abs=1e-5)
    write_nbest(tmp_path / "lines.txt", lines)
    write_nbest(tmp_path / "reversed-lines.txt", [line[::-1] for line in lines])
    for independent in ((), ("--independent-lines",)):
        reports = [json.loads(run_cli("perplexity", tmp_path / name, "-m", model, "--json", *independent).stdout)
                   for name, model in (("lines.txt", bwd_dir), ("reversed-lines.txt", fwd_dir))]
        assert reports[0]["nll"] == pytest.approx(reports[1]["nll"], abs=1e-4)


def test_a_backward_model_samples_the_text_before_the_seed(directions) -> None:  # type: ignore[no-untyped-def]
    from rnnlm.checkpoint import load_model

    bwd_dir, _ = directions
    seed = "sat on"
    result = run_cli("sample", "-m", bwd_dir, "--seed", seed, "--strategy", "greedy", "--length", "300",
                     "--format", "jsonl")
    assert result.returncode == 0, result
    record = json.loads(result.stdout)
    text = run_cli("sample", "-m", bwd_dir, "--seed", seed, "--strategy", "greedy", "--length", "300").stdout
    assert text == record["text"] + seed + "\n" and "\n" not in record["text"]
    bwd = load_model(bwd_dir)
    detail = score_lines(bwd.model, bwd.tokenizer, [record["text"] + seed], detail=True)[0]
    # the model read the seed (last character first), then generated the text before it, right to left
    generated = detail.token_logprobs[len(seed):] if record["stopped"] else detail.token_logprobs[len(seed):-1]
    assert len(generated) == record["tokens"]
    assert sum(generated) == pytest.approx(record["logprob"], abs=1e-4)
    refused = run_cli("sample", "-m", bwd_dir, "--seed", seed, "--stop", ".")
    assert refused.returncode == 2 and len(refused.stderr_lines) == 1, refused


def test_kaldi_nbest_with_costs_rescores_as_the_tsv_form(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = nbest_lines(4, 3, seed=5)
    write_nbest(tmp_path / "nbest.tsv", lines)
    keys = [f"{line.split(chr(9))[0]}-{i % 3 + 1}" for i, line in enumerate(lines)]
    write_nbest(tmp_path / "text", [f"{key} {line.split(chr(9), 2)[2]}".rstrip() for key, line in zip(keys, lines)])
    write_nbest(tmp_path / "costs", [f"{key} {-float(line.split(chr(9))[1])}" for key, line in zip(keys, lines)])
    tsv = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--all")
    kaldi = run_cli("rescore", tmp_path / "text", "--format", "kaldi", "--costs", tmp_path / "costs", "-m",
                    trained.directory, "--all")
    assert kaldi.returncode == 0, kaldi
    assert kaldi.stdout == tsv.stdout
    write_nbest(tmp_path / "bad-costs", [f"{keys[0]} 1.0", f"{keys[2]} 2.0"])
    wrong = run_cli("rescore", tmp_path / "text", "--format", "kaldi", "--costs", tmp_path / "bad-costs", "-m",
                    trained.directory)
    assert wrong.returncode == 1 and "line 2" in wrong.stderr and len(wrong.stderr_lines) == 1, wrong
    write_nbest(tmp_path / "short-costs", [f"{keys[0]} 1.0"])
    short = run_cli("rescore", tmp_path / "text", "--format", "kaldi", "--costs", tmp_path / "short-costs", "-m",
                    trained.directory)
    assert short.returncode == 1 and "fewer costs" in short.stderr, short
    for args in (("--format", "kaldi"), ("--costs", tmp_path / "costs")):
        alone = run_cli("rescore", tmp_path / "text", *args, "-m", trained.directory)
        assert alone.returncode == 2 and len(alone.stderr_lines) == 1, alone


@pytest.mark.parametrize("hypothesis, reference, errors", [
    ("", "", 0), ("a b c", "a b c", 0), ("a x c", "a b c", 1), ("a c", "a b c", 1), ("a b b c", "a b c", 1),
    ("", "a b", 2), ("c b a", "a b c", 2), ("x y", "", 2),
])
def test_word_errors_count_the_fewest_edits(hypothesis: str, reference: str, errors: int) -> None:
    from rnnlm.tuning import word_errors

    assert word_errors(hypothesis.split(), reference.split()) == errors
    assert word_errors(reference.split(), hypothesis.split()) == errors


def test_tune_chooses_settings_no_worse_than_first_pass_or_defaults(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = nbest_lines(10, 6, seed=6)
    write_nbest(tmp_path / "nbest.tsv", lines)
    rng = random.Random(9)
    references = {}
    for line in lines:  # a reference close to one of the hypotheses, not always the first-pass best
        utt, _, text = line.split("\t", 2)
        if utt not in references or rng.random() < 0.3:
            references[utt] = text
    write_nbest(tmp_path / "refs.tsv", [f"{utt}\t{text}" for utt, text in references.items()])
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--tune", tmp_path / "refs.tsv")
    assert result.returncode == 0, result
    table = {row.split(" WER")[0].strip(): float(row.split("WER")[1].split("%")[0]) for row in result.stderr_lines
             if " WER " in row}
    chosen = next(value for label, value in table.items() if label.endswith("(chosen)"))
    oracle = table["oracle (fewest errors in each n-best list)"]
    assert oracle == 0.0
    assert chosen <= table["first pass"] and chosen <= table["lm-weight 1, word-penalty 0"]
    weight, penalty = re.search(r"chosen: --lm-weight (\S+) --word-penalty (\S+)", result.stderr).groups()
    again = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--lm-weight", weight,
                    "--word-penalty", penalty)
    assert again.stdout == result.stdout


def tune_table(stderr_lines: list[str]) -> dict[str, float]:
    """label -> WER (%) of the --tune table on stderr."""
    return {row.split(" WER ")[0].strip(): float(row.split(" WER ")[1].split("%")[0]) for row in stderr_lines
            if " WER " in row}


def references_for(lines: list[str], seed: int) -> list[str]:
    """utt-id<TAB>reference lines, each the text of one of the utterance's hypotheses, not always the first."""
    rng = random.Random(seed)
    references: dict[str, str] = {}
    for line in lines:
        utt, text = line.split("\t")[0], line.split("\t")[-1]
        if utt not in references or rng.random() < 0.3:
            references[utt] = text
    return [f"{utt}\t{text}" for utt, text in references.items()]


def test_tune_with_two_models_is_no_worse_than_each_model_alone(trained: TrainedModel, second: TrainedModel,
                                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = nbest_lines(12, 6, seed=12)
    write_nbest(tmp_path / "nbest.tsv", lines)
    write_nbest(tmp_path / "refs.tsv", references_for(lines, seed=13))
    models = ("-m", trained.directory, "-m", second.directory)
    result = run_cli("rescore", tmp_path / "nbest.tsv", *models, "--tune", tmp_path / "refs.tsv")
    assert result.returncode == 0, result
    table = tune_table(result.stderr_lines)
    alone = [next(v for label, v in table.items() if label.startswith(f"{directory} alone:"))
             for directory in (trained.directory, second.directory)]
    chosen = next(value for label, value in table.items() if label.endswith("(chosen)"))
    assert chosen <= min(alone) and max(alone) <= table["first pass"]
    assert "lm-weight 1, word-penalty 0, weights 0.5,0.5" in table
    options = re.search(r"^chosen: (.*)$", result.stderr, re.MULTILINE).group(1).split()
    assert options[4] == "--weights"
    again = run_cli("rescore", tmp_path / "nbest.tsv", *models, *options)
    assert again.returncode == 0 and again.stdout == result.stdout
    given = run_cli("rescore", tmp_path / "nbest.tsv", *models, "--weights", "0.5,0.5", "--tune", tmp_path / "refs.tsv")
    assert given.returncode == 2 and len(given.stderr_lines) == 1, given


def test_tuner_search_never_loses_to_a_model_alone() -> None:
    """One model knows the errors, two are loud noise, so any share of the noise costs errors: the search
    result has no more errors than any model alone, and each model alone no more than the first pass
    (exact: those points are on the grid)."""
    import numpy as np

    from rnnlm.combination import ModelLogprobs
    from rnnlm.tuning import Tuner, word_errors

    rng = random.Random(21)
    groups = [[Hypothesis(f"u{u}", rng.gauss(0, 3), " ".join(rng.choice("abcd") for _ in range(rng.randint(1, 6))))
               for _ in range(8)] for u in range(30)]
    references = {f"u{u}": " ".join(rng.choice("abcd") for _ in range(4)) for u in range(30)}
    count = sum(len(g) for g in groups)
    knowing = [-5.0 * word_errors(h.text.split(), references[h.utt_id].split()) for g in groups for h in g]
    per_line = np.array([knowing] + [[rng.gauss(-10, 50) for _ in range(count)] for _ in range(2)])
    tuner = Tuner(groups, ModelLogprobs(False, per_line, np.zeros((3, 0)), np.zeros(0)), references, "refs")
    chosen = tuner.search([1 / 3] * 3)
    first_pass = tuner.outcome("", tuner.first_pass).errors
    for model in range(3):
        alone = tuner.alone(model)
        assert chosen.errors <= alone.errors <= first_pass
        assert tuner.outcome("", tuner.scores(alone)).errors == alone.errors
    assert tuner.outcome("", tuner.scores(chosen)).errors == chosen.errors
    assert sum(chosen.weights) == pytest.approx(1)


def column_lines(lines: list[str], seed: int) -> list[str]:
    """The n-best lines with two score columns before the hypothesis: an ignored one, then the --lm-column 4 one."""
    rng = random.Random(seed)
    return [f"{utt}\t{score}\tignored\t{-rng.uniform(0, 20):.4f}\t{text}"
            for utt, score, text in (line.split("\t", 2) for line in lines)]


def test_lm_column_adds_its_weighted_score(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = column_lines(nbest_lines(5, 4, seed=14), seed=15)
    lines[1] = lines[1] + "\twith a tab"  # the hypothesis is all that follows column 4
    write_nbest(tmp_path / "nbest.tsv", lines)
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--all", "--lm-column", "4",
                     "--lm-column-weight", "0.3", "--lm-weight", "0.7", "--word-penalty", "0.5")
    assert result.returncode == 0, result
    rows = [row.split("\t", 6) for row in result.stdout.splitlines()]
    texts = [line.split("\t", 4)[4] for line in lines]
    assert [r[6] for r in rows] == texts and texts[1].endswith("\twith a tab")
    lm = [s.logprob for s in score_lines(trained.model, trained.tokenizer, texts)]
    for row, line, text, logprob in zip(rows, lines, texts, lm):
        first_pass, column = float(line.split("\t")[1]), float(line.split("\t")[3])
        assert float(row[2]) == column and float(row[3]) == pytest.approx(logprob, abs=2e-6)
        expected = first_pass + 0.7 * logprob + 0.3 * column + 0.5 * count_words(text)
        assert float(row[4]) == pytest.approx(expected, abs=1e-5)
    plain = [f"{utt}\t{score}\t{text}" for utt, score, _, _, text in (line.split("\t", 4) for line in lines)]
    write_nbest(tmp_path / "plain.tsv", plain)
    without = run_cli("rescore", tmp_path / "plain.tsv", "-m", trained.directory)
    weightless = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--lm-column", "4",
                         "--lm-column-weight", "0")
    assert weightless.stdout == without.stdout


@pytest.mark.parametrize("bad, problem", [
    ("utt01\t-3.0\tx\t-2.0", "line 4"),  # no hypothesis after column 4
    ("utt01\t-3.0\t-2.0\tthe cat", "line 4"),  # a column short: 'the cat' is read as the score
    ("utt01\t-3.0\tx\tlow\tthe cat", "line 4"),
    ("utt01\t-3.0\tx\tnan\tthe cat", "line 4"),
])
def test_a_missing_or_bad_lm_column_names_its_line(trained: TrainedModel, tmp_path, bad: str,
                                                    problem: str) -> None:  # type: ignore[no-untyped-def]
    lines = ["utt00\t-1.0\tx\t-5\tthe cat", "utt00\t-2.0\tx\t-6\ta dog", "utt01\t-1.5\tx\t-7\tsat", bad]
    write_nbest(tmp_path / "nbest.tsv", lines)
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--lm-column", "4")
    assert result.returncode == 1 and problem in result.stderr and len(result.stderr_lines) == 1, result
    for options in (("--lm-column", "2"), ("--lm-column", "3", "--format", "kaldi", "--costs", tmp_path / "nbest.tsv"),
                    ("--lm-column-weight", "0.5")):
        usage = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, *options)
        assert usage.returncode == 2 and len(usage.stderr_lines) == 1, usage


def test_tune_chooses_the_column_weight_too(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = column_lines(nbest_lines(12, 6, seed=16), seed=17)
    write_nbest(tmp_path / "nbest.tsv", lines)
    write_nbest(tmp_path / "refs.tsv", references_for(lines, seed=18))
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--lm-column", "4",
                     "--tune", tmp_path / "refs.tsv")
    assert result.returncode == 0, result
    table = tune_table(result.stderr_lines)
    chosen = next(value for label, value in table.items() if label.endswith("(chosen)"))
    assert chosen <= table["lm-weight 1, word-penalty 0, column weight 1"]
    options = re.search(r"^chosen: (.*)$", result.stderr, re.MULTILINE).group(1).split()
    assert options[4] == "--lm-column-weight"
    again = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--lm-column", "4", *options)
    assert again.returncode == 0 and again.stdout == result.stdout


@pytest.fixture(scope="module")
def sibling(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A small GRU trained on the session model's text: the same character tokenizer, other weights."""
    return train_small_model(tmp_path_factory.mktemp("sibling"), lines=700, text_seed=1,
                             model=dict(cell="gru", layers=1, embedding_size=8, hidden_size=16, dropout=0.0, tie=False),
                             training=dict(epochs=1, bptt=16, warmup_steps=5, random_seed=4))


def test_linear_mix_is_the_log_of_the_weighted_token_probabilities(trained: TrainedModel,
                                                                   sibling: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import math

    assert trained.tokenizer.to_dict() == sibling.tokenizer.to_dict()
    texts = ["the cat sat", "", "a dog ran to the mat."]
    write_nbest(tmp_path / "texts.txt", texts)
    result = run_cli("score", tmp_path / "texts.txt", "-m", trained.directory, "-m", sibling.directory, "--mix",
                     "linear", "--weights", "0.3,0.7", "--format", "jsonl", "--per-token")
    assert result.returncode == 0, result
    records = [json.loads(row) for row in result.stdout.splitlines()]
    a = score_lines(trained.model, trained.tokenizer, texts, detail=True)
    b = score_lines(sibling.model, sibling.tokenizer, texts, detail=True)
    for record, x, y in zip(records, a, b):
        by_hand = [math.log(0.3 * math.exp(p) + 0.7 * math.exp(q)) for p, q in zip(x.token_logprobs, y.token_logprobs)]
        assert record["token_logprobs"] == pytest.approx(by_hand, abs=1e-9)
        assert record["logprob"] == pytest.approx(sum(by_hand), abs=1e-9)
        assert sum(by_hand) > 0.3 * x.logprob + 0.7 * y.logprob  # the mixture beats the geometric mean
    report = json.loads(run_cli("perplexity", tmp_path / "texts.txt", "-m", trained.directory, "-m", sibling.directory,
                                "--mix", "linear", "--weights", "0.3,0.7", "--json", "--independent-lines").stdout)
    assert report["nll"] == pytest.approx(-sum(r["logprob"] for r in records), abs=1e-9)


def test_linear_mix_with_weights_one_and_zero_is_the_first_model(trained: TrainedModel, sibling: TrainedModel,
                                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    texts = write_nbest_and_texts(tmp_path, seed=19)
    for command, path, *options in [("score", texts, "--format", "jsonl", "--per-token"),
                                    ("perplexity", texts, "--json", "--independent-lines"),
                                    ("rescore", tmp_path / "nbest.tsv", "--all")]:
        alone = run_cli(command, path, "-m", trained.directory, *options)
        both = run_cli(command, path, "-m", trained.directory, "-m", sibling.directory, "--mix", "linear",
                       "--weights", "1,0", *options)
        assert alone.returncode == 0 and both.stdout == alone.stdout, command


def test_linear_mix_refuses_other_tokenizers_directions_and_streams(trained: TrainedModel, sibling: TrainedModel,
                                                                    directions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    swapped = tmp_path / "swapped"  # the sibling with one character of its tokenizer replaced: same size, other tokens
    shutil.copytree(sibling.directory, swapped)
    tokenizer = json.loads((swapped / "tokenizer.json").read_text(encoding="utf-8"))
    assert "\u2603" not in tokenizer["chars"]
    tokenizer["chars"] = tokenizer["chars"][:-1] + "\u2603"
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    bwd_dir, fwd_dir = directions
    for first, other in ((trained.directory, swapped), (fwd_dir, bwd_dir)):
        result = run_cli("score", "-", "-m", first, "-m", other, "--mix", "linear", input=b"the cat\n")
        assert result.returncode == 2 and len(result.stderr_lines) == 1 and "--mix linear" in result.stderr, result
    for command, *options in (("perplexity", "-"), ("score", "-", "--weights", "0.5,0.6")):
        refused = run_cli(command, *options, "-m", trained.directory, "-m", sibling.directory, "--mix", "linear",
                          input=b"the cat\n")
        assert refused.returncode == 2 and len(refused.stderr_lines) == 1, refused


def test_tune_names_an_utterance_without_reference(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_nbest(tmp_path / "nbest.tsv", ["a\t-1\tthe cat", "b\t-1\ta dog"])
    write_nbest(tmp_path / "refs.tsv", ["a\tthe cat"])
    result = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--tune", tmp_path / "refs.tsv")
    assert result.returncode == 1 and "'b'" in result.stderr and len(result.stderr_lines) == 1, result
    both = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory, "--tune", tmp_path / "refs.tsv",
                   "--lm-weight", "0.5")
    assert both.returncode == 2, both


def test_progress_goes_to_a_terminal_only(trained: TrainedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import pty
    import subprocess
    import sys

    from conftest import cli_env

    write_nbest(tmp_path / "nbest.tsv", nbest_lines(3, 2, seed=8))
    plain = run_cli("rescore", tmp_path / "nbest.tsv", "-m", trained.directory)
    assert plain.returncode == 0 and plain.stderr == ""
    controller, terminal = pty.openpty()
    completed = subprocess.run([sys.executable, "-m", "rnnlm", "rescore", str(tmp_path / "nbest.tsv"), "-m",
                                str(trained.directory)], stdout=subprocess.PIPE, stderr=terminal, env=cli_env(),
                               timeout=180)
    os.close(terminal)
    shown = os.read(controller, 4096).decode()
    os.close(controller)
    assert completed.returncode == 0 and completed.stdout.decode() == plain.stdout
    assert "3 utterances, 6 hypotheses rescored" in shown


def test_tuning_offsets_a_word_lms_cost_per_word() -> None:
    """A word LM that charges 5 nats a word, and a first pass that prefers the deletion by 3: only
    an LM weight near 1 with a penalty of 6-7 nats a word picks the correct hypothesis, a penalty a
    fixed range of -4 to 4 did not reach (tuning then chose lm-weight 0 and kept every error)."""
    import numpy as np

    from rnnlm.combination import ModelLogprobs
    from rnnlm.tuning import Tuner, word_penalties

    reference = "a b c d"
    hypotheses = [("a b c", 0.0), (reference, -3.0), ("a b c d e", -3.0)]  # deletion, correct, insertion
    groups = [[Hypothesis(f"u{i}", first, text) for text, first in hypotheses] for i in range(4)]
    lm = [-5.0 * (len(h.text.split()) + 1) - 2.0 * (h.text != reference) for group in groups for h in group]
    scores = ModelLogprobs(False, np.array([lm]), np.zeros((1, 0)), np.zeros(0, dtype=np.int64))
    tuner = Tuner(groups, scores, {f"u{i}": reference for i in range(4)}, "references")
    chosen = tuner.alone(0)
    assert chosen.errors == 0
    assert 3 * chosen.settings.lm_weight + 3 < chosen.settings.word_penalty < 7 * chosen.settings.lm_weight
    assert word_penalties(0.0) == [0.0] and word_penalties(2.0)[0] == -20.0 and word_penalties(2.0)[-1] == 20.0
