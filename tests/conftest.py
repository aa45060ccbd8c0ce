"""Shared fixtures: isolated user state, a tiny trained model per session, and a CLI runner.

Every test runs with RNNLM_HOME and RNNLM_CACHE_DIR pointing into its own temporary
directory, so nothing reads or writes the real user's model pointer or cache. Tests make
their own small corpora; nothing here reads /work/shared or the network.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis: the @given tests here use no per-example state from function-scoped fixtures
# (the autouse environment fixture only points at temporary directories), so that health
# check is noise; deadlines are off because the first example may pay for a torch warm-up;
# no example database, so the suite writes nothing outside temporary directories.
settings.register_profile(
    "rnnlm", deadline=None, max_examples=60, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("rnnlm")


def limit_torch_threads() -> None:
    """One intra-op thread, where torch is loaded (conftest itself never imports torch).

    Tiny models gain nothing from more, and on a shared 2-core machine OpenMP threads
    fighting other processes slow a training step down a hundredfold.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_user_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the user's data and cache directories at fresh temporary directories."""
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("RNNLM_HOME", str(base / "home"))
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("RNNLM_DEBUG", raising=False)
    limit_torch_threads()
    return base


# ---------------------------------------------------------------------------------------
# Running the command line in a subprocess


@dataclass
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"rnnlm {' '.join(self.args)} -> {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def cli_env(**overrides: str) -> dict[str, str]:
    """The environment for a `python -m rnnlm` subprocess: the current (isolated) one."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("RNNLM_DEBUG", None)
    env.update(overrides)
    return env


def run_cli(*args: str | os.PathLike, cwd: Path | None = None, input: bytes | None = None,
            env: dict[str, str] | None = None, timeout: float = 180) -> CliResult:
    """Run `python -m rnnlm ARGS` and return its exit code, stdout and stderr (decoded as UTF-8)."""
    argv = tuple(str(a) for a in args)
    completed = subprocess.run(
        [sys.executable, "-m", "rnnlm", *argv], cwd=cwd, input=input if input is not None else b"",
        capture_output=True, env=env if env is not None else cli_env(), timeout=timeout,
    )
    return CliResult(argv, completed.returncode, completed.stdout.decode("utf-8", "replace"),
                     completed.stderr.decode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------
# Small corpora

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "café", "naïve", "straße",
         "über", "日本", "語", "🙂", "Ωμέγα", "is", "it", "not", "so", "big", "small", "red", "blue"]


def make_corpus(lines: int, seed: int = 0) -> str:
    """Sentence-like lines over a small vocabulary with non-ASCII and astral characters."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
        punct = rng.choice([".", ".", "!", "?", ",", ""])
        out.append(" ".join(words) + punct)
    return "\n".join(out) + "\n"


# Lines for scoring: seen text, unseen characters, an empty line, spaces and tabs, and a
# line longer than the scorer's time window (512 tokens) so windows carry the state.
EVAL_LINES = [
    "the cat sat on a mat.",
    "",
    "日本 語 🙂 café",
    "x",
    "unseen: ✓ ☃ ∑ and the dog",
    "  leading and trailing spaces  ",
    "tab\tseparated\twords",
    " ".join(["the small red dog ran to a blue cat"] * 20),  # about 740 characters
    "naïve straße über Ωμέγα!",
    "it is not so big?",
]


@dataclass
class TrainedModel:
    directory: Path
    corpus_file: Path
    prepared: object  # rnnlm.prepared_corpus.PreparedCorpus
    loaded: object  # rnnlm.checkpoint.LoadedModel
    home: Path  # RNNLM_HOME that was in effect while training
    result: object  # rnnlm.training.TrainResult

    @property
    def model(self):  # type: ignore[no-untyped-def]
        return self.loaded.model  # type: ignore[attr-defined]

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self.loaded.tokenizer  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """One small character LSTM, trained once per session through the library API.

    Two layers with dropout and a tied decoder behind a projection (embedding 16, hidden 32),
    so the multi-layer state, eval mode and the projection path are all exercised.
    """
    limit_torch_threads()
    return train_small_model(tmp_path_factory.mktemp("trained"), lines=700, text_seed=1,
                             model=dict(cell="lstm", layers=2, embedding_size=16, hidden_size=32, dropout=0.1, tie=True),
                             training=dict(epochs=8, bptt=32, warmup_steps=10, random_seed=0))


def train_small_model(base: Path, lines: int, text_seed: int, model: dict, training: dict) -> TrainedModel:
    """Prepare make_corpus(lines, text_seed) in `base` and train a model on it through the library,
    with RNNLM_HOME and the cache inside `base`."""
    from rnnlm.checkpoint import load_model
    from rnnlm.preparation import PrepareOptions, prepare
    from rnnlm.model import ModelConfig
    from rnnlm.training import TrainConfig, train

    corpus_file = base / "corpus.txt"
    corpus_file.write_text(make_corpus(lines, seed=text_seed), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNNLM_HOME", str(base / "home"))
        patch.setenv("RNNLM_CACHE_DIR", str(base / "cache"))
        prepared = prepare([str(corpus_file)], base / "prepared", PrepareOptions(valid_fraction=0.1))
        config = ModelConfig(vocab_size=prepared.tokenizer.vocab_size, **model)
        result = train(prepared, base / "model", config,
                       TrainConfig(**{"batch_size": 8, "lr": 2e-2, "precision": "fp32", "device": "cpu",
                                      "eval_interval": 1000.0} | training))
        loaded = load_model(base / "model")
    return TrainedModel(base / "model", corpus_file, prepared, loaded, base / "home", result)
