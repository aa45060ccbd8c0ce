"""The library's `train` and `prepare` (rnnlm.workflows) follow the command line's policy exactly.

Both call rnnlm.defaults, so the same arguments give the same config.json, presets and overrides
combine the same way, a bad argument is refused naming it before anything is written, and a
resumed run keeps its settings but for the timing ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_corpus, run_cli
from rnnlm import workflows
from rnnlm.defaults import DEFAULT_BUDGET, TrainSettings, resumed_settings, training_config
from rnnlm.errors import InvalidOption, UserError

TINY = dict(hidden_size=32, embedding_size=16, layers=1, batch_size=8, bptt=32, precision="fp32", device="cpu")


def as_options(settings: dict[str, object]) -> list[str]:
    """Keyword arguments as the command line's options: hidden_size=32 is --hidden-size 32."""
    options: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        options += [flag] if value is True else [flag.replace("--", "--no-", 1)] if value is False else [flag, str(value)]
    return options


def saved_config(directory: Path) -> dict[str, object]:
    """config.json but for what must differ between two runs: when it was written."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return {key: value for key, value in config.items() if key not in ("created", "created_at", "trained_at")}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_corpus(150, seed=4), encoding="utf-8")
    return path


@pytest.mark.parametrize("preset, settings", [
    (None, dict(TINY, epochs=1, dropout=0.1, random_seed=3, locked_dropout=True, tie=False)),
    ("zaremba-small", dict(hidden_size=24, embedding_size=16, epochs=1, batch_size=4, device="cpu", precision="fp32")),
], ids=["options", "preset-with-overrides"])
def test_library_train_writes_the_config_of_the_command_line(tmp_path: Path, corpus: Path, preset: str | None,
                                                              settings: dict[str, object]) -> None:
    preset_options = ["--preset", preset] if preset else []
    cli = run_cli("train", corpus, "-o", tmp_path / "cli", *preset_options, *as_options(settings), cwd=tmp_path)
    assert cli.returncode == 0, cli
    result = workflows.train(corpus, tmp_path / "library", preset=preset, **settings)  # type: ignore[arg-type]
    assert result.directory == tmp_path / "library"
    library = saved_config(tmp_path / "library")
    assert library == saved_config(tmp_path / "cli")
    training = library["training"]
    assert isinstance(training, dict) and training["epochs"] == 1 and training["max_time"] is None
    if preset:  # the preset's own settings where no argument overrides them
        assert training["optimizer"] == "sgd" and training["lr"] == 1.0 and training["bptt"] == 20


def test_max_time_takes_seconds_or_a_duration_and_defaults_to_five_minutes() -> None:
    assert training_config(TrainSettings.new_run({}).values).max_time == DEFAULT_BUDGET == 300.0
    assert training_config(TrainSettings.new_run({"epochs": 3}).values).max_time is None
    assert training_config(TrainSettings.new_run({"max_time": "1h30m"}).values).max_time == 5400.0
    assert training_config(TrainSettings.new_run({"max_time": 90}).values).max_time == 90.0


@pytest.mark.parametrize("arguments, argument", [
    (dict(hiden_size=32), "hiden_size"),  # not a setting of train
    (dict(layers=0), "layers"),
    (dict(dropout=1.5), "dropout"),
    (dict(batch_size="8"), "batch_size"),
    (dict(max_time="banana"), "max_time"),
    (dict(max_time=-5), "max_time"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(cell="lstm", mogrifier_rounds=3), "mogrifier_rounds"),
])
def test_a_bad_argument_is_refused_by_name_before_anything_is_written(tmp_path: Path, corpus: Path,
                                                                      arguments: dict[str, object], argument: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        workflows.train(corpus, tmp_path / "model", **arguments)  # type: ignore[arg-type]
    assert refused.value.argument == argument
    assert str(refused.value).startswith(f"{argument}: ") and "--" not in str(refused.value)
    assert not (tmp_path / "model").exists()


def test_the_command_line_names_the_option_of_a_library_argument(tmp_path: Path, corpus: Path) -> None:
    refused = run_cli("train", corpus, "-o", tmp_path / "model", "--cell", "gru", "--attention-memory", "8")
    assert refused.returncode == 2 and refused.stderr_lines == [
        "rnnlm: error: --attention-memory applies to the sru++ cell only, not to gru"], refused


def test_library_resume_changes_only_the_timing(tmp_path: Path, corpus: Path) -> None:
    model = tmp_path / "model"
    first = workflows.train(corpus, model, epochs=1, max_time="10m", **TINY)  # type: ignore[arg-type]
    for changed in (dict(hidden_size=64), dict(lr=0.5)):
        with pytest.raises(UserError, match=f"`{next(iter(changed))}` cannot change"):
            workflows.train(resume=model, **changed)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="`preset` cannot be given"):
        workflows.train(resume=model, preset="awd-lstm")
    with pytest.raises(UserError, match="the corpus cannot change"):
        workflows.train(corpus, resume=model)
    _, model_config, config = resumed_settings(model, {"epochs": 2})
    assert config.epochs == 2 and config.max_time is None  # epochs alone clears the time budget
    assert (config.lr, config.batch_size, model_config.hidden_size) == (0.01, 8, 32)  # the saved settings, kept
    _, _, config = resumed_settings(model, {"max_time": "1m", "patience": 0})
    assert (config.epochs, config.max_time, config.patience) == (1, 60.0, None)
    resumed = workflows.train(resume=str(model), epochs=2)
    assert resumed.steps == 2 * first.steps


def test_library_prepare_writes_what_the_command_line_writes(tmp_path: Path, corpus: Path) -> None:
    cli = run_cli("prepare", corpus, "-o", tmp_path / "cli", "--tokenizer", "word", "--valid-fraction", "0.2")
    assert cli.returncode == 0, cli
    prepared = workflows.prepare([corpus], tmp_path / "library", tokenizer="word", valid_fraction=0.2)
    for name in ("meta.json", "tokenizer.json", "train.bin", "valid.bin"):
        assert (tmp_path / "library" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert prepared.tokenizer.kind == "word"
    with pytest.raises(InvalidOption) as refused:
        workflows.prepare(corpus, tmp_path / "other", epochs=1)
    assert refused.value.argument == "epochs" and not (tmp_path / "other").exists()
