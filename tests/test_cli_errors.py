"""Acceptance: how `python -m rnnlm` fails.

A user error exits non-zero with exactly one non-empty line on stderr and no traceback:
1 for bad input, 2 for a bad command line (an option value out of its range included). The cases run as subprocesses, concurrently, once per module, and each
test checks one of them.
"""

from __future__ import annotations

import json
import shutil
import string
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CliResult, cli_env, run_cli

BAD_UTF8 = b"first line\nsecond \xff line\nthird\n"
BAD_OFFSET, BAD_LINE = len(b"first line\nsecond "), 2


@dataclass
class Case:
    args: tuple[str, ...]
    expect: tuple[str, ...] = ()  # substrings the one-line message must contain (case-insensitive)
    code: int | None = None  # the exact exit code, where the contract fixes it
    env: str = "default"
    stdout_lines: int = 0  # lines printed before the error (score writes the lines before bad input)


def cases() -> dict[str, Case]:
    model, f = "{model}", "{good}"
    utf8 = (f"byte {BAD_OFFSET}", f"line {BAD_LINE}")
    return {
        # missing files
        "prepare-missing": Case(("prepare", "{missing}", "-o", "{out}"), ("missing.txt", "no such file"), 1),
        "train-missing": Case(("train", "{missing}", "-o", "{out}", "--epochs", "1"), ("no such file",), 1),
        "score-missing": Case(("score", "{missing}", "-m", model), ("no such file",), 1),
        "perplexity-missing": Case(("perplexity", "{missing}", "-m", model), ("no such file",), 1),
        # empty files
        "prepare-empty": Case(("prepare", "{empty}", "-o", "{out}"), ("empty|0 line",), 1),
        "train-empty": Case(("train", "{empty}", "-o", "{out}", "--epochs", "1"), ("empty|0 line",), 1),
        "perplexity-empty": Case(("perplexity", "{empty}", "-m", model), ("empty",), 1),
        # a directory where a file is expected
        "prepare-directory": Case(("prepare", "{directory}", "-o", "{out}"), ("directory",), 1),
        "score-directory": Case(("score", "{directory}", "-m", model), ("directory",), 1),
        # invalid UTF-8: the message names the byte offset and the line
        "prepare-utf8": Case(("prepare", "{bad}", "-o", "{out}"), ("bad.txt", *utf8), 1),
        "score-utf8": Case(("score", "{bad}", "-m", model), utf8, 1, stdout_lines=BAD_LINE - 1),
        "perplexity-utf8": Case(("perplexity", "{bad}", "-m", model), utf8, 1),
        # model directories that are missing or damaged
        "score-no-model-dir": Case(("score", f, "-m", "{nowhere}"), ("no such model directory",), 1),
        "sample-no-latest-model": Case(("sample", "--length", "5"), ("rnnlm train",), 1, env="fresh"),
        "sample-garbage-weights": Case(("sample", "-m", "{garbage_weights}", "--length", "5"), ("model.safetensors", "not a valid safetensors"), 1),
        "score-invalid-config": Case(("score", f, "-m", "{invalid_config}"), ("config.json", "not valid JSON"), 1),
        "perplexity-config-wrong-shape": Case(("perplexity", f, "-m", "{wrong_shape_config}"), ("model.safetensors", "size mismatch"), 1),
        "score-config-not-an-object": Case(
            ("score", f, "-m", "{list_config}"), ("config.json", "not written by rnnlm"), 1),
        "score-tokenizer-not-matching-model": Case(
            ("score", "{wide}", "-m", "{wide_tokenizer}"), ("tokenizer",), 1),
        # option values
        "train-max-time-banana": Case(("train", f, "-o", "{out}", "--max-time", "banana"), ("--max-time", "banana"), 2),
        "train-eval-interval-banana": Case(
            ("train", f, "-o", "{out}", "--eval-interval", "banana"), ("--eval-interval", "banana"), 2),
        "sample-top-p": Case(("sample", "-m", model, "--top-p", "1.5"), ("--top-p", "1"), 2),
        "sample-temperature": Case(("sample", "-m", model, "--temperature", "-1"), ("--temperature",), 2),
        "sample-beam-size": Case(("sample", "-m", model, "--beam-size", "0"), ("--beam-size", "1"), 2),
        "sample-more-samples-than-beams": Case(
            ("sample", "-m", model, "--strategy", "beam", "--beam-size", "3", "--num-samples", "4"),
            ("--num-samples", "--beam-size"), 2),
        "sample-empty-stop": Case(("sample", "-m", model, "--stop", ""), ("--stop",), 2),
        # bad usage: exit code 2 (these fail while parsing, before any heavy import)
        "usage-unknown-command": Case(("frobnicate",), ("frobnicate",), 2),
        "usage-missing-argument": Case(("train",), (), 2),
        "usage-bad-choice": Case(("sample", "--strategy", "sideways"), ("sideways",), 2),
        "usage-bad-format": Case(("score", "--format", "xml"), ("xml",), 2),
        "usage-not-an-int": Case(("sample", "--length", "many"), ("--length",), 2),
        "usage-below-minimum": Case(("train", f, "--layers", "0"), ("layers",), 2),
        "usage-unknown-option": Case(("score", "--no-such-option"), ("--no-such-option",), 2),
    }


CASES = cases()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, trained) -> dict[str, CliResult]:
    base = tmp_path_factory.mktemp("cli-errors")
    (base / "empty.txt").write_bytes(b"")
    (base / "adir").mkdir()
    (base / "bad.txt").write_bytes(BAD_UTF8)
    (base / "good.txt").write_text("the cat sat\non a mat\n", encoding="utf-8")
    (base / "wide.txt").write_text("zzz qqq\n", encoding="utf-8")
    model = base / "model"
    shutil.copytree(trained.directory, model)

    def damaged(name: str, file: str, content: bytes | None) -> Path:
        copy = base / name
        shutil.copytree(trained.directory, copy)
        if content is None:
            (copy / file).unlink()
        else:
            (copy / file).write_bytes(content)
        return copy

    config = (model / "config.json").read_text(encoding="utf-8")
    paths = {
        "missing": base / "missing.txt", "empty": base / "empty.txt", "directory": base / "adir",
        "bad": base / "bad.txt", "good": base / "good.txt", "wide": base / "wide.txt", "model": model,
        "nowhere": base / "no-such-model",
        "garbage_weights": damaged("garbage", "model.safetensors", b"this is not a safetensors file at all"),
        "invalid_config": damaged("badconfig", "config.json", b'{"format": "rnnlm-model", "model": '),
        "list_config": damaged("listconfig", "config.json", b"[1, 2, 3]\n"),
        "wrong_shape_config": damaged("shape", "config.json",
                                      config.replace('"hidden_size": 32', '"hidden_size": 48').encode()),
        # a tokenizer with far more characters than the model's vocabulary ('z' gets id 53)
        "wide_tokenizer": damaged("widetok", "tokenizer.json", json.dumps(
            {"kind": "char", "chars": string.ascii_letters + "".join(map(chr, range(0x4E00, 0x4E00 + 200)))}).encode()),
    }
    assert '"hidden_size": 48' in (base / "shape" / "config.json").read_text(encoding="utf-8")
    envs = {
        "default": cli_env(RNNLM_HOME=str(base / "home"), RNNLM_CACHE_DIR=str(base / "cache")),
        "fresh": cli_env(RNNLM_HOME=str(base / "fresh-home"), RNNLM_CACHE_DIR=str(base / "fresh-cache")),
    }

    def run(item: tuple[str, Case]) -> tuple[str, CliResult]:
        name, case = item
        values = {key: str(value) for key, value in paths.items()} | {"out": str(base / f"out-{name}")}
        return name, run_cli(*(arg.format(**values) for arg in case.args), cwd=base, env=envs[case.env])

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, CASES.items()))


@pytest.mark.parametrize("name", list(CASES))
def test_user_error_is_one_line_without_traceback(name: str, cli_runs: dict[str, CliResult]) -> None:
    case, result = CASES[name], cli_runs[name]
    assert result.returncode != 0, result
    if case.code is not None:
        assert result.returncode == case.code, result
    assert "Traceback" not in result.stderr, result
    assert len(result.stderr_lines) == 1, result
    message = result.stderr_lines[0]
    assert message.startswith("rnnlm: error: "), result
    for expected in case.expect:  # "a|b": either will do
        assert any(option.lower() in message.lower() for option in expected.split("|")), result
    assert len(result.stdout.splitlines()) == case.stdout_lines, result


def test_failed_prepare_and_train_leave_no_output_behind(cli_runs: dict[str, CliResult]) -> None:
    for name in CASES:
        if name.startswith(("prepare-", "train-")):
            out = Path(cli_runs[name].args[cli_runs[name].args.index("-o") + 1])
            assert not out.exists(), name
            assert not list(out.parent.glob(f".{out.name}.*")), name  # no temporary directory left


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_score_of_empty_input_prints_nothing_and_succeeds(source: str, trained, tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    args = ["score", "-m", str(trained.directory)] + ([str(empty)] if source == "file" else [])
    result = run_cli(*args, input=b"")
    assert result.returncode == 0, result
    assert result.stdout == ""
    assert result.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["score", "--help"], ["sample", "--help"],
                                  ["perplexity", "--help"], ["prepare", "--help"], ["--version"]])
def test_help_works_without_importing_torch(args: list[str]) -> None:
    completed = subprocess.run([sys.executable, "-X", "importtime", "-m", "rnnlm", *args], capture_output=True,
                               env=cli_env(), timeout=60)
    stdout = completed.stdout.decode("utf-8", "replace")
    stderr = completed.stderr.decode("utf-8", "replace")
    assert completed.returncode == 0, stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    assert "rnnlm.cli" in imported  # importtime really reported the imports
    heavy = [m for m in imported if m.split(".")[0] in ("torch", "numpy")]
    assert heavy == [], heavy
    if args == ["--help"]:
        for command in ("prepare", "train", "sample", "score", "perplexity"):
            assert command in stdout
    elif args == ["--version"]:
        assert stdout.startswith("rnnlm ")
    else:
        assert "Usage" in stdout and "--help" in stdout


def test_help_path_leaves_torch_out_of_sys_modules() -> None:
    program = (
        "import sys\n"
        "sys.argv = ['rnnlm', '--help']\n"
        "from rnnlm.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        "assert code in (0, None), code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, env=cli_env(), timeout=60)
    assert completed.returncode == 0, completed.stderr.decode()
    assert completed.stdout.decode().rstrip().endswith("NO-TORCH")


def test_bare_command_prints_help_without_traceback() -> None:
    result = run_cli()
    assert "Traceback" not in result.stderr, result
    assert "prepare" in result.stdout + result.stderr
    assert result.returncode in (0, 2)


# ---------------------------------------------------------------------------------------
# The same failures through the library, for damage not worth a subprocess each


@pytest.mark.parametrize("damage", ["truncated-weights", "missing-weights", "missing-tokenizer", "wrong-format",
                                    "missing-directory"])
def test_load_model_turns_damage_into_a_user_error(damage: str, trained, tmp_path) -> None:
    from rnnlm.checkpoint import load_model
    from rnnlm.errors import UserError

    copy = tmp_path / "model"
    shutil.copytree(trained.directory, copy)
    if damage == "truncated-weights":
        data = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(data[: len(data) - 100])
    elif damage == "missing-weights":
        (copy / "model.safetensors").unlink()
    elif damage == "missing-tokenizer":
        (copy / "tokenizer.json").unlink()
    elif damage == "wrong-format":
        config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
        (copy / "config.json").write_text(json.dumps(config | {"format": "something-else"}), encoding="utf-8")
    else:
        shutil.rmtree(copy)
    with pytest.raises(UserError) as error:
        load_model(copy)
    assert str(copy) in str(error.value) and "\n" not in str(error.value)


def test_no_latest_model_is_a_user_error() -> None:
    from rnnlm.checkpoint import load_model
    from rnnlm.errors import UserError

    with pytest.raises(UserError, match="-m/--model"):
        load_model(None)
