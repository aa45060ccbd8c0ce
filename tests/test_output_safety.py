"""Output directories as a user meets them: rnnlm's own files replaced, the user's kept, one writer
at a time, and nothing a killed run leaves behind blocks the next one.

Each test runs real `rnnlm` processes on a tiny corpus (a few seconds of training each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, make_corpus, run_cli

TINY = ("--hidden-size", "16", "--embedding-size", "8", "--layers", "1", "--batch-size", "4", "--bptt", "16",
        "--precision", "fp32", "--device", "cpu", "--epochs", "1")


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_corpus(120, seed=3), encoding="utf-8")
    return path


def scores(model: Path, cwd: Path) -> str:
    result = run_cli("score", "-m", model, "--format", "value", input=b"the cat sat\n", cwd=cwd)
    assert result.returncode == 0, result
    return result.stdout


def test_training_again_into_a_model_directory_keeps_the_users_files(corpus: Path, tmp_path: Path) -> None:
    first = run_cli("train", corpus, "-o", tmp_path / "m", *TINY, cwd=tmp_path)
    assert first.returncode == 0, first
    (tmp_path / "m" / "notes.txt").write_text("keep\n", encoding="utf-8")
    (tmp_path / "m" / "plots").mkdir()
    second = run_cli("train", corpus, "-o", tmp_path / "m", *TINY, "--hidden-size", "24", cwd=tmp_path)
    assert second.returncode == 0, second
    assert (tmp_path / "m" / "notes.txt").read_text(encoding="utf-8") == "keep\n"
    assert (tmp_path / "m" / "plots").is_dir()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["hidden_size"] == 24
    scores(tmp_path / "m", tmp_path)


@pytest.mark.parametrize("name", [".", b"caf\xe9-model".decode("utf-8", "surrogateescape")])
def test_unusual_output_names_train_and_load(corpus: Path, tmp_path: Path, name: str) -> None:
    """'.' (a directory with no name of its own) and a file name that is not UTF-8."""
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-m", "rnnlm", "train", str(corpus), "-o", name, *TINY], cwd=work,
                            capture_output=True, env=cli_env())
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    model = work / name
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [], "temporaries or locks left"
    scores(model, work)


def test_two_trains_into_one_directory_one_wins_the_other_stops_at_once(corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "c"
    args = [sys.executable, "-m", "rnnlm", "train", str(corpus), "-o", str(model), *TINY]
    first = subprocess.Popen([*args, "--epochs", "40"], stderr=subprocess.PIPE, env=cli_env())
    try:
        lock = tmp_path / ".c.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()):
            assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lock"
            time.sleep(0.05)
        started = time.monotonic()
        second = run_cli("train", corpus, "-o", model, *TINY, "--hidden-size", "24", cwd=tmp_path)
        assert second.returncode == 1, second
        assert f"pid {first.pid}" in second.stderr and "being written by another rnnlm process" in second.stderr
        assert time.monotonic() - started < 30  # it does not wait for the first run
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    config = json.loads((model / "config.json").read_text())
    assert config["model"]["hidden_size"] == 16  # the first run's model, whole
    scores(model, tmp_path)


def test_a_killed_writer_leaves_nothing_that_blocks_the_next_run(corpus: Path, tmp_path: Path) -> None:
    """SIGKILL while holding the lock and building aside; the next run proceeds and cleans up."""
    model = tmp_path / "k"
    holder = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(model)], stdout=subprocess.PIPE,
                              env=cli_env())
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"writing"
    holder.kill()
    holder.wait()
    assert (tmp_path / ".k.lock").exists() and any(tmp_path.glob(".k.*.tmp"))
    result = run_cli("train", corpus, "-o", model, *TINY, cwd=tmp_path)
    assert result.returncode == 0, result
    assert not any(tmp_path.glob(".k*")), sorted(p.name for p in tmp_path.iterdir())
    scores(model, tmp_path)


KILLED_WRITER = """
import sys, time
from pathlib import Path
from rnnlm import locks
from rnnlm.outputs import _temporary_directory
target = Path(sys.argv[1])
with locks.exclusive(target):
    (_temporary_directory(target) / "half-written").write_text("x")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_a_run_that_keeps_diverging_stops_and_keeps_its_best_model(corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "d"
    result = run_cli("train", corpus, "-o", model, *TINY, "--epochs", "50", "--lr", "1e30", "--optimizer", "sgd",
                     cwd=tmp_path)
    assert result.returncode == 1, result
    assert len(result.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in result.stderr
    assert "rnnlm: error:" in result.stderr and "diverged" in result.stderr.lower()
    assert not os.path.exists(tmp_path / ".d.lock")
