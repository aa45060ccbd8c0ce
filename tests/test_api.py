"""The Python API (`rnnlm.load`, LanguageModel, State, the exceptions) gives what the commands give."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EVAL_LINES, TrainedModel, cli_env, run_cli

import rnnlm
from rnnlm.errors import BusyDirectory, CorruptModel, InvalidOption, ModelNotFound, RnnlmError, UserError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm(trained: TrainedModel) -> rnnlm.LanguageModel:
    return rnnlm.load(trained.directory, device="cpu")


@pytest.fixture(scope="module")
def backward_directory(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained weights read as a backward model (config.json's reverse set): no training needed
    to check that every path reverses its input as the commands do."""
    directory = tmp_path_factory.mktemp("backward") / "model"
    shutil.copytree(trained.directory, directory)
    config = json.loads((directory / "config.json").read_text())
    config["model"]["reverse"] = True
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def cli_records(model: Path, path: Path) -> list[dict]:
    result = run_cli("score", path, "-m", model, "--format", "jsonl", "--per-token")
    assert result.returncode == 0, result
    return [json.loads(row) for row in result.stdout.splitlines()]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_scores_and_token_scores_equal_the_command_line(trained: TrainedModel, backward_directory: Path,
                                                        direction: str, tmp_path: Path) -> None:
    directory = trained.directory if direction == "forward" else backward_directory
    model = rnnlm.load(directory, device="cpu")
    assert model.reverse == (direction == "backward")
    records = cli_records(directory, write_lines(tmp_path / "in.txt", EVAL_LINES))
    scores = model.score(EVAL_LINES)
    assert isinstance(scores, list) and len(scores) == len(records)
    for line, value, record in zip(EVAL_LINES, scores, records):
        assert value == pytest.approx(record["logprob"], rel=1e-6, abs=1e-9)
        assert model.score(line) == pytest.approx(record["logprob"], rel=1e-6, abs=1e-9)
        pieces = model.token_scores(line)
        assert [piece for piece, _ in pieces] == record["pieces"]
        # one line alone runs in another batch shape than among the others: float32 rounding apart
        assert [value for _, value in pieces] == pytest.approx(record["token_logprobs"], abs=1e-5)
    with (tmp_path / "in.txt").open(encoding="utf-8") as lines:  # an open file: its newlines are dropped
        assert model.score(lines) == scores


def test_word_scores_group_the_token_scores_by_whitespace_word(lm: rnnlm.LanguageModel) -> None:
    """For a character model each token is a character of the line, so the words can be cut by hand:
    white space counts with the word after it, and at the end with the end-of-line."""
    for line in EVAL_LINES:
        tokens = lm.token_scores(line)
        expected: list[float] = []
        carried, after_space = 0.0, True
        for character, (_, value) in zip(line, tokens):
            if character.isspace():
                carried, after_space = carried + value, True
                continue
            if after_space:
                expected.append(0.0)
            expected[-1] += carried + value
            carried, after_space = 0.0, False
        words = lm.word_scores(line)
        assert [w for w, _ in words] == line.split() + ["<eol>"]
        assert [v for _, v in words] == pytest.approx([*expected, tokens[-1][1] + carried], abs=1e-9)
        assert sum(v for _, v in words) == pytest.approx(lm.score(line), abs=1e-6)


def test_perplexity_equals_the_command_line_field_by_field(lm: rnnlm.LanguageModel, trained: TrainedModel,
                                                           tmp_path: Path) -> None:
    path = write_lines(tmp_path / "eval.txt", EVAL_LINES * 3)
    before = lm.score(EVAL_LINES)
    for flags, options in [((), {}), (("--independent-lines",), {"independent_lines": True}),
                           (("--dynamic",), {"dynamic": True})]:
        result = run_cli("perplexity", path, "-m", trained.directory, "--json", *flags)
        assert result.returncode == 0, result
        expected = json.loads(result.stdout)
        for source in (path, str(path), EVAL_LINES * 3):
            measured = lm.perplexity(source, **options).to_dict()
            assert list(measured) == list(expected)
            for key, value in expected.items():
                assert measured[key] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-9)), key
    assert lm.score(EVAL_LINES) == before  # dynamic evaluation adapted a copy, not this model
    with pytest.raises(UserError, match="empty"):
        lm.perplexity([])
    with pytest.raises(UserError, match="independent"):
        lm.perplexity(path, independent_lines=True, dynamic=True)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_pieces_advanced_one_after_another_sum_to_the_line_score(lm: rnnlm.LanguageModel, backward_directory: Path,
                                                                 direction: str) -> None:
    model = lm if direction == "forward" else rnnlm.load(backward_directory, device="cpu")
    rng = random.Random(0)
    for line in EVAL_LINES:
        cuts = sorted(rng.sample(range(1, len(line)), min(4, max(0, len(line) - 1)))) if len(line) > 1 else []
        pieces = [line[a:b] for a, b in zip([0, *cuts], [*cuts, len(line)])]
        state, total = model.start(), 0.0
        for piece in reversed(pieces) if model.reverse else pieces:  # a backward model reads from the line's end
            state, logprob = model.advance(state, piece)
            total += logprob
        state, logprob = model.end(state)
        assert total + logprob == pytest.approx(model.score(line), abs=1e-5)
        if not model.reverse:
            _, whole = model.advance(model.start(), line + "\n")
            assert whole == pytest.approx(model.score(line), abs=1e-5)
    if model.reverse:
        with pytest.raises(UserError, match="backward"):
            model.advance(model.start(), "two\nlines")


def test_next_log_probs_is_the_distribution_that_advance_reads(lm: rnnlm.LanguageModel) -> None:
    state, _ = lm.advance(lm.start(), "the ca")
    distribution = lm.next_log_probs(state)
    assert distribution.shape == (len(lm.vocabulary),)
    assert float(distribution.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    for piece in ("t", " ", "d"):
        _, logprob = lm.advance(state, piece)
        assert logprob == pytest.approx(float(distribution[lm.vocabulary.index(piece)]), abs=1e-5)
    _, logprob = lm.end(state)
    assert logprob == pytest.approx(float(distribution[lm.vocabulary.index("<eol>")]), abs=1e-5)


def test_two_states_advanced_from_one_stay_independent(lm: rnnlm.LanguageModel) -> None:
    shared, _ = lm.advance(lm.start(), "the dog ")
    kept = [tensor.clone() for tensor in shared.recurrent]
    first, first_logprob = lm.advance(shared, "ran to a mat")
    second, second_logprob = lm.advance(shared, "sat")
    assert all((tensor == copy).all() for tensor, copy in zip(shared.recurrent, kept))
    assert lm.advance(shared, "ran to a mat")[1] == first_logprob  # the shared state reads as before
    assert lm.advance(first, "!")[1] != lm.advance(second, "!")[1]
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first.recurrent, second.recurrent))
    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.last_token = 0  # type: ignore[misc]
    assert lm.advance(shared, "") == (shared, 0.0)


@pytest.mark.parametrize("options", [["--random-seed", "7", "--top-k", "5"],
                                     ["--strategy", "beam", "--beam-size", "3", "--until-eol"]])
def test_sample_and_stream_equal_rnnlm_sample(lm: rnnlm.LanguageModel, trained: TrainedModel,
                                              options: list[str]) -> None:
    result = run_cli("sample", "-m", trained.directory, "--seed", "the ", "--length", "60", *options)
    assert result.returncode == 0, result
    keywords = ({"random_seed": 7, "top_k": 5} if "--random-seed" in options else {"beam": 3, "until_eol": True})
    text = lm.sample("the ", length=60, **keywords)
    assert result.stdout == text + ("" if text.endswith("\n") else "\n")
    parts = list(lm.stream("the ", length=60, **keywords))
    assert "".join(parts) == text
    if "beam" not in keywords:
        assert len(parts) > 2  # given as it is decoded, not at the end
        assert lm.sample("the ", length=60, **keywords) == text  # a seed reproduces it


def test_a_stream_left_early_stops_its_generation(lm: rnnlm.LanguageModel) -> None:
    stream = lm.stream("a", length=10_000, random_seed=1)
    assert next(stream) == "a"
    next(stream)
    stream.close()  # joins the generating thread: this returns only once it stopped
    with pytest.raises(InvalidOption, match="temperature"):
        lm.sample(temperature=-1)


def test_import_rnnlm_loads_neither_torch_nor_numpy() -> None:
    code = ("import sys, rnnlm; heavy = [m for m in ('torch', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy; assert set(rnnlm.__all__) <= set(dir(rnnlm)); "
            "rnnlm.ModelNotFound; assert 'torch' not in sys.modules")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert completed.returncode == 0, completed.stderr
    for name in set(rnnlm.__all__) - {"train", "prepare"}:  # those two come from rnnlm.workflows
        assert getattr(rnnlm, name) is not None
    with pytest.raises(AttributeError):
        rnnlm.no_such_name  # noqa: B018


def test_load_without_a_model_takes_the_latest_as_the_commands_do(trained: TrainedModel, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFound, match="none trained yet"):
        rnnlm.load()
    result = run_cli("score", write_lines(tmp_path / "in.txt", ["the cat"]))
    assert result.returncode == 1 and result.stderr_lines == ["rnnlm: error: " + str(_error(rnnlm.load))]
    monkeypatch.setenv("RNNLM_HOME", str(trained.home))  # where training recorded the user-wide latest
    assert rnnlm.load().directory.resolve() == trained.directory.resolve()
    result = run_cli("score", tmp_path / "in.txt", "--format", "value", env=cli_env(RNNLM_HOME=str(trained.home)))
    assert float(result.stdout) == pytest.approx(rnnlm.load().score("the cat"), abs=1e-6)
    monkeypatch.setenv("RNNLM_MODEL", str(tmp_path / "absent"))
    with pytest.raises(ModelNotFound, match="RNNLM_MODEL"):
        rnnlm.load()


def _error(call) -> Exception:  # type: ignore[no-untyped-def]
    try:
        call()
    except RnnlmError as error:
        return error
    raise AssertionError("no error")


def test_errors_are_the_documented_classes_and_the_cli_keeps_exit_1(trained: TrainedModel, tmp_path: Path) -> None:
    assert issubclass(UserError, RnnlmError)
    for kind in (ModelNotFound, CorruptModel, BusyDirectory, InvalidOption):
        assert issubclass(kind, UserError) and getattr(rnnlm, kind.__name__) is kind
    with pytest.raises(ModelNotFound):
        rnnlm.load(tmp_path / "absent")
    with pytest.raises(ModelNotFound, match="config.json"):
        rnnlm.load(tmp_path)  # a directory that holds no model
    damaged = tmp_path / "damaged"
    shutil.copytree(trained.directory, damaged)
    (damaged / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CorruptModel, match="safetensors"):
        rnnlm.load(damaged)
    result = run_cli("score", "-m", damaged)
    assert result.returncode == 1 and result.stderr_lines == [f"rnnlm: error: {_error(lambda: rnnlm.load(damaged))}"]
    (damaged / "config.json").write_text("{")
    with pytest.raises(CorruptModel, match="JSON"):
        rnnlm.load(damaged)
    _check_busy(tmp_path / "busy")


def _check_busy(target: Path) -> None:
    """Another process holding a directory's writer lock makes it a BusyDirectory here."""
    from rnnlm import locks

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from rnnlm import locks\n"
         f"with locks.exclusive(Path({str(target)!r})):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline() == "held\n"  # type: ignore[union-attr]
        with pytest.raises(BusyDirectory) as caught, locks.exclusive(target):
            pass
        assert caught.value.pid == holder.pid
    finally:
        holder.communicate("")


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    blocks, block, inside = [], [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() == "```python":
            inside, block = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append("\n".join(block))
        elif inside:
            block.append(line)
    return blocks


def test_the_python_guide_runs(trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/python.md's examples, run in order in one namespace, in a project whose latest model
    is a copy of the session's model: the guide stays true to the code."""
    shutil.copytree(trained.directory, tmp_path / "models" / "ptb-lstm")
    (tmp_path / "models" / "latest").write_text("ptb-lstm\n")
    write_lines(tmp_path / "test.txt", EVAL_LINES)
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(Path(__file__).parent.parent / "docs" / "python.md")
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)  # noqa: S102
    assert namespace["latest"].directory.resolve() == (tmp_path / "models" / "ptb-lstm").resolve()
