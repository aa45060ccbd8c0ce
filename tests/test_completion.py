"""Shell completion: the scripts for bash, zsh and fish, and the answers a shell gets on Tab.

A completion request is what the bash script sends: `_RNNLM_COMPLETE=complete_bash` with the
words typed so far in COMP_WORDS and the index of the word being completed in COMP_CWORD.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what a glance at a model checks
SCRIPT_MARKS = {"bash": "complete -o default -F _rnnlm_completion rnnlm", "zsh": "#compdef rnnlm",
                "fish": "complete --command rnnlm"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_each_shells_script(shell: str) -> None:
    # Typer's switch for a named shell where no shell runs the command (as here)
    result = run_cli("--show-completion", shell, env=cli_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert result.returncode == 0, result
    assert SCRIPT_MARKS[shell] in result.stdout and "_RNNLM_COMPLETE=complete_" + shell in result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_variable_prints_each_shells_script(shell: str) -> None:
    result = run_cli(env=cli_env(_RNNLM_COMPLETE=f"source_{shell}"))
    assert result.returncode == 0, result
    assert SCRIPT_MARKS[shell] in result.stdout


def fake_model(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in MODEL_FILES:
        (directory / name).write_text("{}")
    return directory


def offered(words: str, cwd: Path, **env: str) -> list[str]:
    """What bash is offered for the last word of `words` (a trailing space: a new, empty word)."""
    index = len(words.split()) if words.endswith(" ") else len(words.split()) - 1
    result = run_cli(cwd=cwd, env=cli_env(_RNNLM_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(index), **env))
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout.splitlines()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with two models, a folder that is not one, and a user-wide model elsewhere."""
    fake_model(tmp_path / "project" / "models" / "alice-lstm")
    fake_model(tmp_path / "project" / "models" / "ptb-gru")
    (tmp_path / "project" / "models" / "not-a-model").mkdir()
    (tmp_path / "project" / "models" / "latest").write_text("ptb-gru\n")
    return tmp_path / "project"


def test_subcommands_options_and_choices_are_completed(project: Path) -> None:
    assert {"prepare", "train", "sample", "score", "perplexity", "models", "info"} <= set(offered("rnnlm ", project))
    assert offered("rnnlm in", project) == ["info"]
    assert {"--json", "--quiet"} <= set(offered("rnnlm info --", project))
    assert {"lstm", "gru", "sru"} <= set(offered("rnnlm train --cell ", project))
    assert sorted(offered("rnnlm score --format ", project)) == ["jsonl", "kenlm", "tsv", "value"]


def test_model_directories_are_completed(project: Path, tmp_path: Path) -> None:
    elsewhere = fake_model(tmp_path / "elsewhere" / "big-lstm")
    home = tmp_path / "home"
    home.mkdir()
    (home / "latest").write_text(f"{elsewhere}\n")
    both = ["models/alice-lstm", "models/ptb-gru"]
    assert offered("rnnlm info ", project, RNNLM_HOME=str(home)) == sorted([str(elsewhere), *both])
    assert offered("rnnlm score -m ", project) == both
    assert offered("rnnlm perplexity x --model models/p", project) == ["models/ptb-gru"]
    assert offered("rnnlm sample -m ./models/a", project) == ["./models/alice-lstm"]
    assert offered("rnnlm info ", project / "models") == ["alice-lstm", "ptb-gru"]  # relative to where one is


def test_completing_a_model_directory_does_not_import_torch(project: Path) -> None:
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
             "from rnnlm.cli import main\nmain()\n")
    env = cli_env(_RNNLM_COMPLETE="complete_bash", COMP_WORDS="rnnlm info ", COMP_CWORD="2")
    result = subprocess.run([sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split() == ["models/alice-lstm", "models/ptb-gru"]
    assert result.stderr.strip() == "False"
