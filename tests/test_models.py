"""Which model answered: each project keeps its own default (models/latest), a run elsewhere or a
killed run changes nothing here, commands name on stderr a model the user did not name (stdout
unchanged), and `rnnlm models` lists a project's models with the one used here.

Models are tiny and trained in-process; the command-line cases run as subprocesses,
concurrently, once per module.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CliResult, cli_env, limit_torch_threads, make_corpus, run_cli

SCORED = "the cat sat on a mat.\n\n日本 語 🙂\nnot seen: ✓\n"
NOTICE = re.compile(r"^rnnlm: model (?P<path>\S+) \((?P<tokenizer>\w+), lstm 1×16, \d+(\.\d)?k parameters, "
                    r"validation (?P<validation>[^,]+), trained \S+ on \d{4}-\d\d-\d\d; (?P<reason>[^)]+)\)$")
BIG_RUN = ["--hidden-size", "64", "--embedding-size", "16", "--layers", "1", "--batch-size", "8", "--bptt", "32",
           "--precision", "fp32", "--device", "cpu", "--max-time", "90s", "--checkpoint-interval", "1h"]


def prepared_corpus(base: Path, tokenizer: str):  # type: ignore[no-untyped-def]
    from rnnlm.preparation import PrepareOptions, prepare

    corpus = base / f"corpus-{tokenizer}.txt"
    corpus.write_text(make_corpus(300, seed=3), encoding="utf-8")
    return prepare([str(corpus)], base / f"prepared-{tokenizer}", PrepareOptions(tokenizer=tokenizer, valid_fraction=0.1))


def train_tiny(prepared, output: Path, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    from rnnlm.model import ModelConfig
    from rnnlm.training import TrainConfig, train

    config = ModelConfig(vocab_size=prepared.tokenizer.vocab_size, cell="lstm", layers=1, embedding_size=8,
                         hidden_size=16)
    train(prepared, output, config, TrainConfig(epochs=1, batch_size=8, bptt=16, precision="fp32", device="cpu",
                                                eval_interval=1000.0, random_seed=seed))


@dataclass
class Projects:
    a: Path  # a project with a char model a1, then a2 (its latest)
    b: Path  # a project with a word model b1, trained after a2 (so the user-wide latest)
    empty: Path  # a directory without models
    stale: Path  # a project whose models/latest names a directory that is gone
    home: Path
    runs: dict[str, CliResult]

    def model(self, name: str) -> Path:
        return (self.a if name.startswith("a") else self.b) / "models" / name


def cli_cases(p: Projects) -> dict[str, tuple[tuple[str, ...], Path, dict[str, str]]]:
    """name: (arguments, working directory, extra environment)."""
    a2 = str(p.model("a2"))
    return {
        "score": (("score", "lines.txt"), p.a, {}),
        "score-m": (("score", "lines.txt", "-m", a2), p.a, {}),
        "score-quiet": (("score", "lines.txt", "--quiet"), p.a, {}),
        "score-env-quiet": (("score", "lines.txt"), p.a, {"RNNLM_QUIET": "1"}),
        "sample": (("sample", "--length", "5", "--random-seed", "1"), p.a, {}),
        "perplexity": (("perplexity", "lines.txt", "--json"), p.a, {}),
        "score-stale": (("score", "../a/lines.txt"), p.stale, {}),
        "models-json": (("models", "--json"), p.a, {}),
        "models-table": (("models",), p.a, {}),
        "models-empty": (("models",), p.empty, {}),
    }


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Projects:
    base = tmp_path_factory.mktemp("projects")
    p = Projects(base / "a", base / "b", base / "empty", base / "stale", base / "home", {})
    for directory in (p.a, p.b, p.empty, p.stale / "models"):
        directory.mkdir(parents=True)
    (p.a / "lines.txt").write_text(SCORED, encoding="utf-8")
    (p.stale / "models" / "latest").write_bytes(b"gone\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNNLM_HOME", str(p.home))
        import torch  # noqa: F401  (loaded now, so that it runs one thread: see conftest)

        limit_torch_threads()
        char, word = prepared_corpus(base, "char"), prepared_corpus(base, "word")
        train_tiny(char, p.model("a1"))
        train_tiny(char, p.model("a2"), seed=1)
        train_tiny(word, p.model("b1"))
    env = cli_env(RNNLM_HOME=str(p.home), RNNLM_CACHE_DIR=str(base / "cache"))
    env.pop("RNNLM_MODEL", None)
    env.pop("RNNLM_QUIET", None)

    def run(item: tuple[str, tuple[tuple[str, ...], Path, dict[str, str]]]) -> tuple[str, CliResult]:
        name, (args, cwd, extra) = item
        return name, run_cli(*args, cwd=cwd, env=env | extra)

    with ThreadPoolExecutor(max_workers=4) as pool:
        p.runs = dict(pool.map(run, cli_cases(p).items()))
    return p


def notice_of(result: CliResult) -> re.Match[str]:
    assert result.returncode == 0, result
    assert len(result.stderr_lines) == 1, result
    match = NOTICE.match(result.stderr_lines[0])
    assert match, result.stderr_lines[0]
    return match


def test_the_notice_names_the_projects_latest_when_no_model_is_named(projects: Projects) -> None:
    for name in ("score", "sample", "perplexity"):
        match = notice_of(projects.runs[name])
        assert match["path"] == "models/a2" and match["reason"] == "the project's latest", name
        assert match["tokenizer"] == "char" and match["validation"].endswith(" bits/char")
    assert not projects.runs["score-m"].stderr  # named with -m: nothing to say


def test_score_stdout_is_byte_identical_with_and_without_the_notice(projects: Projects) -> None:
    runs = projects.runs
    assert runs["score"].stdout == runs["score-m"].stdout == runs["score-quiet"].stdout
    assert len(runs["score"].stdout.splitlines()) == len(SCORED.splitlines())


def test_quiet_and_rnnlm_quiet_silence_the_notice(projects: Projects) -> None:
    for name in ("score-quiet", "score-env-quiet"):
        result = projects.runs[name]
        assert result.returncode == 0 and result.stderr == "", result
        assert result.stdout == projects.runs["score"].stdout, name


def test_another_project_uses_its_own_model_in_its_natural_unit(projects: Projects) -> None:
    from rnnlm.inventory import notice
    from rnnlm.project import resolve_model

    match = NOTICE.match(notice(resolve_model(start=projects.b / "models" / "b1")))  # found from below too
    assert match and match["path"] == str(projects.model("b1")) and match["reason"] == "the project's latest"
    assert match["tokenizer"] == "word" and re.fullmatch(r"perplexity \d+\.\d\d per word", match["validation"])


def test_rnnlm_model_comes_before_the_projects_latest(projects: Projects, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlm.errors import UserError
    from rnnlm.inventory import notice
    from rnnlm.project import resolve_model

    monkeypatch.setenv("RNNLM_MODEL", str(projects.model("b1")))
    match = NOTICE.match(notice(resolve_model(start=projects.a)))
    assert match and match["path"] == str(projects.model("b1")) and match["reason"] == "named by RNNLM_MODEL"
    monkeypatch.setenv("RNNLM_MODEL", str(projects.a / "no-such-model"))
    with pytest.raises(UserError) as error:
        resolve_model(start=projects.a)
    assert str(error.value) == (f"RNNLM_MODEL names {projects.a / 'no-such-model'}, which does not exist; set it to a "
                                "model directory (see 'rnnlm models') or unset it, or pass -m DIR")


def test_a_stale_pointer_is_one_line_with_the_fix(projects: Projects) -> None:
    result = projects.runs["score-stale"]
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr_lines == ["rnnlm: error: models/latest: names models/gone, which does not exist; "
                                   "pass -m DIR (see 'rnnlm models') or remove models/latest"], result


def test_models_json_describes_each_model_and_the_one_used_here(projects: Projects) -> None:
    result = projects.runs["models-json"]
    assert result.returncode == 0 and result.stderr == "", result
    listed = json.loads(result.stdout)
    assert [Path(entry["path"]) for entry in listed] == [projects.model("a1"), projects.model("a2"),
                                                          projects.model("b1")]
    a1, a2, b1 = listed
    assert [entry["default"] for entry in listed] == [False, True, False]
    assert a2["default_reason"] == "the project's latest" and a1["default_reason"] is None
    assert a2["roles"] == ["the project's latest"] and b1["roles"] == ["the user-wide latest"] and a1["roles"] == []
    for entry in listed:
        directory = Path(entry["path"])
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        best = min(records, key=lambda record: record["val_loss"])
        assert entry["valid"] and entry["problem"] is None and not entry["being_trained"]
        assert (entry["cell"], entry["layers"], entry["hidden_size"]) == ("lstm", 1, 16)
        assert entry["parameters"] == config["parameters"] > 0
        assert entry["corpus"] == f"corpus-{entry['tokenizer']}.txt"
        assert entry["val_nats_per_token"] == best["val_loss"] and entry["val_bpc"] == best["val_bpc"]
        assert entry["val_word_ppl"] == best["val_word_ppl"]
        assert entry["training_s"] == records[-1]["elapsed_s"] and entry["trained_at"]
    assert a1["natural_units"] == ["bpc"] and b1["natural_units"] == ["word_ppl"]
    assert b1["val_word_ppl"] == pytest.approx(math.exp(b1["val_nats_per_token"]))  # words are the tokens


def test_models_table_stars_the_model_used_here(projects: Projects) -> None:
    result = projects.runs["models-table"]
    assert result.returncode == 0, result
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3 and "*" in rows[1] and "*" not in rows[0] + rows[2], result.stdout
    assert "bits/char" in rows[0] and "per word" in rows[2]
    assert result.stdout.splitlines()[-1] == "used here without -m: models/a2 (the project's latest)"


def test_models_lists_a_stale_pointer_target_with_its_problem(projects: Projects) -> None:
    from rnnlm.inventory import project_inventory

    listed = project_inventory(projects.stale / "models", None)
    assert [(info.path, info.problem, info.roles) for info in listed] == [
        (projects.stale / "models" / "gone", "does not exist", ["the project's latest"])]
    assert (projects.stale / "models" / "latest").read_bytes() == b"gone\n"  # listed, never modified


def test_models_in_a_directory_without_models_says_so(projects: Projects) -> None:
    result = projects.runs["models-empty"]
    assert result.returncode == 0, result
    assert "no model directories in models" in result.stderr
    assert result.stdout.splitlines()[-1] == f"used here without -m: {projects.model('b1')} (the user-wide latest)"
    assert not projects.empty.joinpath("models").exists()


def test_each_project_keeps_its_own_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlm.project import PROJECT_LATEST, USER_LATEST, resolve_model

    char = prepared_corpus(tmp_path, "char")
    first, second, outside = tmp_path / "first", tmp_path / "second", tmp_path / "outside"
    outside.mkdir()
    train_tiny(char, first / "models" / "one")
    train_tiny(char, second / "models" / "two")
    assert resolve_model(start=first).path == first / "models" / "one"
    train_tiny(char, second / "models" / "three")
    train_tiny(char, tmp_path / "elsewhere", seed=2)  # not in a models folder: only the user-wide latest
    assert resolve_model(start=first).path == first / "models" / "one"
    assert resolve_model(start=first / "models" / "one").reason == PROJECT_LATEST  # found from below too
    assert resolve_model(start=second).path == second / "models" / "three"
    train_tiny(char, first / "models" / "four")
    assert resolve_model(start=second).path == second / "models" / "three"
    assert resolve_model(start=first).path == first / "models" / "four"
    assert resolve_model(start=outside).reason == USER_LATEST
    assert resolve_model(start=outside).path == first / "models" / "four"
    monkeypatch.setenv("RNNLM_MODEL", str(second / "models" / "two"))
    assert resolve_model(start=first).path == second / "models" / "two"
    assert resolve_model(Path("given")).path == Path("given")


def test_a_pointer_holds_any_file_name(tmp_path: Path) -> None:
    from rnnlm.project import record_latest, resolve_model, shown

    model = tmp_path / "models" / os.fsdecode(b"caf\xe9-\xff")  # not UTF-8
    train_tiny(prepared_corpus(tmp_path, "char"), model)
    assert (tmp_path / "models" / "latest").read_bytes() == b"caf\xe9-\xff\n"
    assert resolve_model(start=tmp_path).path == model
    assert "\\xff" in shown(model)
    record_latest(model)  # again: the pointer is replaced whole, nothing else appears
    assert sorted(os.listdir(tmp_path / "models")) == sorted([model.name, "latest"])


def test_a_pointer_to_a_directory_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    from rnnlm.errors import UserError
    from rnnlm.project import resolve_model

    (tmp_path / "models" / "half").mkdir(parents=True)
    (tmp_path / "models" / "half" / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "models" / "latest").write_bytes(b"half\n")
    with pytest.raises(UserError, match=r"latest: names .*half, which is not a model directory \(it has no "
                                        r"model.safetensors\); pass -m DIR"):
        resolve_model(start=tmp_path)


def start_training(project: Path, output: str, *extra: str) -> subprocess.Popen[bytes]:
    corpus = project / "big.txt"
    corpus.write_text(make_corpus(20000, seed=4), encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "rnnlm", "train", str(corpus), "-o", output, *BIG_RUN, *extra],
                            cwd=project, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition, process: subprocess.Popen[bytes], timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the training run ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_killed_run_changes_no_default(tmp_path: Path) -> None:
    from rnnlm import locks
    from rnnlm.project import resolve_model, user_pointer

    train_tiny(prepared_corpus(tmp_path, "char"), tmp_path / "models" / "kept")
    pointers = {path: path.read_bytes() for path in (tmp_path / "models" / "latest", user_pointer())}
    for project in (tmp_path, tmp_path / "other"):  # in this project, and in another one
        project.mkdir(exist_ok=True)
        run = start_training(project, "models/killed", "--eval-interval", "1h")
        try:
            wait_for(lambda: locks.writer_pid(project / "models" / "killed") == run.pid, run)
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait()
        assert {path: path.read_bytes() for path in pointers} == pointers
        assert not (project / "models" / "killed").exists()
        assert resolve_model(start=tmp_path).path == tmp_path / "models" / "kept"


def test_a_model_being_trained_elsewhere_is_marked_and_changes_nothing_here(tmp_path: Path) -> None:
    from rnnlm.inventory import describe, notice
    from rnnlm.project import resolve_model

    here, there = tmp_path / "here", tmp_path / "there"
    train_tiny(prepared_corpus(tmp_path, "char"), here / "models" / "kept")
    there.mkdir()
    run = start_training(there, "models/running", "--eval-every", "3")
    try:
        wait_for(lambda: (there / "models" / "latest").is_file(), run)
        chosen = resolve_model(start=there)
        assert chosen.path == there / "models" / "running"
        assert describe(chosen.path).writer_pid == run.pid
        assert notice(chosen).endswith(f", still being trained (pid {run.pid}); the project's latest)")
        assert resolve_model(start=here).path == here / "models" / "kept"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert describe(there / "models" / "running").writer_pid is None


def test_training_lines_lead_with_the_natural_unit(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from rnnlm.display import TrainingDisplay
    from rnnlm.model import ModelConfig
    from rnnlm.training import TrainConfig, train
    from rnnlm.units import natural_text

    for tokenizer, unit in (("word", r"perplexity \d+\.\d\d per word"), ("char", r"\d\.\d{3} bits/char")):
        prepared = prepared_corpus(tmp_path, tokenizer)
        out = io.StringIO()
        config = ModelConfig(vocab_size=prepared.tokenizer.vocab_size, cell="lstm", layers=1, embedding_size=8,
                             hidden_size=16)
        result = train(prepared, tmp_path / f"m-{tokenizer}", config,
                       TrainConfig(epochs=1, batch_size=8, bptt=16, precision="fp32", device="cpu"),
                       TrainingDisplay(Console(file=out, width=200)))
        lines = out.getvalue().splitlines()
        evaluations = [line for line in lines if line.startswith("step ")]
        assert evaluations and all(re.search(rf"  val {unit} \(\d\.\d{{4}} nats/token\)", line) for line in evaluations)
        assert any(re.search(rf"best validation\s*│ {unit} \(", line) for line in lines), lines
        record = result.history[-1]
        counts = prepared.counts("valid")
        assert record["val_word_ppl"] == pytest.approx(math.exp(record["val_loss"] * counts.tokens / counts.words))
    assert natural_text("bpe", 12.5, 1.25) == "perplexity 12.50 per word, 1.250 bits/char"
    assert natural_text("unigram", None, 1.25) is None


def test_no_pointer_anywhere_is_the_usual_error(tmp_path: Path) -> None:
    from rnnlm.errors import UserError
    from rnnlm.project import resolve_model

    with pytest.raises(UserError, match="none trained yet.*-m/--model DIR"):
        resolve_model(start=tmp_path)
