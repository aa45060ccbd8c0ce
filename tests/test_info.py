"""`rnnlm info`: every field of a fresh model, checked against the model, its corpus and its metrics.

The figures come from the model directory's files alone (rnnlm.info); these tests check them
against what loading the model, the prepared corpus and metrics.jsonl say.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from conftest import TrainedModel, cli_env, run_cli

from rnnlm.info import ModelDetails, model_details

FIELDS_IN_ORDER = tuple(ModelDetails.__dataclass_fields__)
FIELDS = set(FIELDS_IN_ORDER)


def info_json(*args: str | Path, cwd: Path | None = None) -> dict:
    result = run_cli("info", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result
    return json.loads(result.stdout)


def metrics(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_json_gives_every_field_with_the_models_values(trained: TrainedModel) -> None:
    from rnnlm.model import count_parameters

    shown = info_json(trained.directory)
    assert set(shown) == FIELDS
    assert shown["path"] == str(trained.directory.resolve())
    assert (shown["cell"], shown["direction"], shown["layers"], shown["embedding_size"], shown["hidden_size"]) == (
        "lstm", "forward", 2, 16, 32)
    assert (shown["tie"], shown["softmax_head"]) == (True, trained.model.config.softmax_head)
    assert shown["parameters"] == count_parameters(trained.model)
    assert (shown["tokenizer"], shown["vocab_size"]) == ("char", trained.tokenizer.vocab_size)
    assert shown["corpus_directory"] == str(trained.prepared.directory)
    assert shown["corpus_sources"] == trained.prepared.meta["sources"]
    for split in ("train", "valid", "test"):
        assert shown[f"{split}_tokens"] == len(trained.prepared.splits[split])
    assert (shown["epochs"], shown["max_time_s"]) == (8, None)
    assert (shown["steps"], shown["epochs_completed"]) == (trained.result.steps, 8)
    assert 0 < shown["training_s"] <= trained.result.elapsed_s
    assert (shown["precision"], shown["autocast"]) == ("fp32", "fp32")
    config = json.loads((trained.directory / "config.json").read_text())
    assert shown["rnnlm_version"] == config.get("rnnlm_version")  # null where training does not record it
    assert datetime.fromisoformat(shown["created_at"]).tzinfo is not None


def test_best_validation_is_the_lowest_loss_in_metrics(trained: TrainedModel) -> None:
    shown = info_json(trained.directory)
    records = metrics(trained.directory)
    best = min(records, key=lambda record: record["val_loss"])
    assert shown["best_step"] == best["step"]
    assert shown["val_nats_per_token"] == best["val_loss"] == trained.result.best_val_loss
    assert math.isclose(shown["val_ppl"], math.exp(best["val_loss"]), rel_tol=1e-12)
    assert (shown["val_bpc"], shown["val_word_ppl"]) == (best["val_bpc"], best["val_word_ppl"])


def test_the_best_is_found_wherever_it_lies_in_metrics(trained: TrainedModel, tmp_path: Path) -> None:
    copy = shutil.copytree(trained.directory, tmp_path / "model")
    records = metrics(copy)
    lowest = dict(records[0], val_loss=0.25, step=3)
    worse = dict(records[0], val_loss=9.0, step=5)
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [worse, lowest, worse]))
    shown = info_json(copy)
    assert (shown["best_step"], shown["val_nats_per_token"]) == (3, 0.25)


def test_human_output_names_each_figure_with_its_unit(trained: TrainedModel) -> None:
    result = run_cli("info", trained.directory)
    assert result.returncode == 0, result
    shown = model_details(trained.directory)
    lines = result.stdout.splitlines()
    values = {line[:17].strip(): line[17:] for line in lines}  # aligned: the key column is 15 wide plus 2 spaces
    assert values["cell"] == "lstm, forward"
    assert values["parameters"] == f"{shown.parameters:,}"
    assert values["vocabulary"] == f"{shown.vocab_size} tokens (char tokenizer)"
    assert values["tokens"] == (f"train {shown.train_tokens:,}, valid {shown.valid_tokens:,}, "
                                f"test {shown.test_tokens:,}")
    assert values["budget"] == "8 epochs, no time limit"
    assert values["best validation"] == (  # a character model: bits per character first (rnnlm.units)
        f"{shown.val_bpc:.3f} bits/char, {shown.val_nats_per_token:.4f} nats/token, perplexity {shown.val_ppl:.2f} "
        f"per token, perplexity {shown.val_word_ppl:.2f} per word (step {shown.best_step})")
    assert values["rnnlm version"] == (shown.rnnlm_version or "unknown")
    assert len(lines) == len(values) == 17 and result.stderr == ""


def test_the_recorded_rnnlm_version_is_shown(trained: TrainedModel, tmp_path: Path) -> None:
    copy = shutil.copytree(trained.directory, tmp_path / "model")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"rnnlm_version": "0.9.1"}))
    assert info_json(copy)["rnnlm_version"] == "0.9.1"
    assert "rnnlm version    0.9.1" in run_cli("info", copy).stdout


def test_the_library_function_gives_the_json_output(trained: TrainedModel) -> None:
    assert model_details(str(trained.directory)).to_json() == info_json(trained.directory)


def test_without_model_the_projects_latest_is_named_on_stderr(trained: TrainedModel, tmp_path: Path) -> None:
    shutil.copytree(trained.directory, tmp_path / "models" / "m")
    (tmp_path / "models" / "latest").write_text("m\n")
    result = run_cli("info", "--json", cwd=tmp_path)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["path"] == str(tmp_path / "models" / "m")
    assert len(result.stderr_lines) == 1 and result.stderr_lines[0].startswith("rnnlm: model models/m (")
    quiet = run_cli("info", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet


def test_a_model_from_an_older_rnnlm_shows_what_it_has(trained: TrainedModel, tmp_path: Path) -> None:
    copy = shutil.copytree(trained.directory, tmp_path / "model")
    config = json.loads((copy / "config.json").read_text())
    del config["corpus"], config["training"], config["model"]["reverse"], config["rnnlm_version"]
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "metrics.jsonl").unlink()
    shutil.rmtree(copy / "checkpoint")
    shown = info_json(copy)
    assert (shown["cell"], shown["hidden_size"], shown["parameters"]) == ("lstm", 32, info_json(trained.directory)["parameters"])
    unknown = {"direction", "tokenizer", "corpus_sources", "corpus_directory", "train_tokens", "valid_tokens",
               "test_tokens", "max_time_s", "epochs", "training_s", "steps", "epochs_completed", "best_step",
               "val_nats_per_token", "val_ppl", "val_word_ppl", "val_bpc", "precision", "autocast", "rnnlm_version"}
    if trained.model.config.softmax_head is None:
        unknown.add("softmax_head")  # null there too: one plain softmax
    assert {key for key, value in shown.items() if value is None} == unknown
    human = run_cli("info", copy)
    assert human.returncode == 0 and "best validation  unknown" in human.stdout, human


def test_a_missing_directory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run_cli("info", tmp_path / "absent")
    assert result.returncode == 1, result
    assert result.stderr_lines == [f"rnnlm: error: {tmp_path / 'absent'}: does not exist"]
    assert result.stdout == ""


def test_damaged_files_are_one_line_and_exit_1(trained: TrainedModel, tmp_path: Path) -> None:
    for name, damage in (("config.json", b"{not json"), ("model.safetensors", b"\xff" * 8 + b"{}"),
                         ("metrics.jsonl", b"[1, 2]\n")):
        copy = shutil.copytree(trained.directory, tmp_path / name)
        (copy / name).write_bytes(damage)
        result = run_cli("info", copy)
        assert result.returncode == 1, result
        assert len(result.stderr_lines) == 1 and result.stderr_lines[0].startswith(f"rnnlm: error: {copy / name}"), result


def test_info_reads_no_weights_and_imports_no_torch(trained: TrainedModel) -> None:
    completed = subprocess.run([sys.executable, "-X", "importtime", "-m", "rnnlm", "info", str(trained.directory)],
                               capture_output=True, env=cli_env(), timeout=60)
    assert completed.returncode == 0, completed.stderr
    imported = [line.rsplit(b"|", 1)[-1].strip().decode() for line in completed.stderr.splitlines()
                if line.startswith(b"import time:")]
    assert "rnnlm.info" in imported  # importtime really reported the imports
    assert [name for name in imported if name.split(".")[0] in ("torch", "numpy", "safetensors")] == []


def test_the_json_help_lists_every_key_in_order() -> None:
    import typer

    from rnnlm.cli import app

    option = next(p for p in typer.main.get_command(app).commands["info"].params if p.name == "as_json")
    assert option.help.split(": ", 1)[1].rstrip(".").split(", ") == list(FIELDS_IN_ORDER)
