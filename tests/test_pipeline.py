"""End to end through the command line: prepare, train, then sample, score and measure
with the latest model (no -m), in a temporary working directory."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import make_corpus, run_cli

METRIC_KEYS = {"step", "tokens", "train_loss", "val_loss", "val_bpc", "lr", "tokens_per_s", "elapsed_s"}
PERPLEXITY_KEYS = {"tokens", "words", "chars", "oov", "nll", "ppl", "word_ppl", "bpc", "mode"}
TINY = ["--epochs", "1", "--hidden-size", "32", "--embedding-size", "16", "--layers", "1", "--batch-size", "8",
        "--bptt", "32", "--precision", "fp32", "--device", "cpu"]


def test_prepare_train_sample_score_perplexity(tmp_path: Path, isolated_user_state: Path) -> None:
    home = Path(os.environ["RNNLM_HOME"])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(400, seed=5), encoding="utf-8")

    prepared = run_cli("prepare", corpus, "-o", "prep", "--valid-fraction", "0.1", cwd=tmp_path)
    assert prepared.returncode == 0, prepared
    assert prepared.stdout == ""  # messages go to stderr
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text(encoding="utf-8"))
    assert meta["splits"]["valid"]["lines"] == 40 and meta["splits"]["train"]["lines"] == 360

    trained = run_cli("train", "prep", *TINY, cwd=tmp_path)
    assert trained.returncode == 0, trained
    assert trained.stdout == ""
    models = [path for path in (tmp_path / "models").iterdir() if path.is_dir()]
    assert len(models) == 1, models  # the default output goes under ./models
    model = models[0]
    assert (home / "latest").read_text(encoding="utf-8").strip() == str(model.resolve())
    assert (tmp_path / "models" / "latest").read_text(encoding="utf-8") == model.name + "\n"  # the project's latest
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        assert (model / name).is_file(), name
    assert not [p for p in model.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".bin")]  # nothing pickled
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["hidden_size"] == 32 and config["model"]["layers"] == 1
    records = [json.loads(line) for line in (model / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records
    for record in records:
        assert METRIC_KEYS <= record.keys(), record
        assert record["val_loss"] > 0 and math.isfinite(record["val_loss"])
        assert record["val_bpc"] == pytest.approx(
            record["val_loss"] * meta["splits"]["valid"]["tokens"] / meta["splits"]["valid"]["chars"] / math.log(2))
        assert record["lr"] > 0 and record["tokens_per_s"] > 0 and record["elapsed_s"] >= 0
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    steps_per_epoch = math.ceil(((meta["splits"]["train"]["tokens"] - 1) // 8) / 32)
    assert records[-1]["step"] == steps_per_epoch
    assert records[-1]["tokens"] == 8 * ((meta["splits"]["train"]["tokens"] - 1) // 8)  # one pass over 8 rows

    # sample with no -m: the latest model
    sampled = run_cli("sample", "--seed", "the cat ", "--length", "20", "--random-seed", "1", cwd=tmp_path)
    assert sampled.returncode == 0, sampled
    assert sampled.stdout.startswith("the cat ")
    generated = sampled.stdout[len("the cat "):]
    assert generated.endswith("\n")
    assert len(generated) in (20, 21)  # 20 characters (newlines among them), plus a final newline if needed

    # score: one output line per input line, in order, LOGPROB<TAB>LINE
    lines = ["the cat sat on a mat.", "", "日本 語 🙂", "unseen ✓ character"]
    to_score = tmp_path / "lines.txt"
    to_score.write_text("\n".join(lines) + "\n", encoding="utf-8")
    scored = run_cli("score", to_score, cwd=tmp_path)
    assert scored.returncode == 0, scored
    rows = scored.stdout.splitlines()
    assert len(rows) == len(lines)
    values = []
    for row, line in zip(rows, lines):
        value, text = row.split("\t", 1)
        assert text == line
        values.append(float(value))
        assert values[-1] < 0

    measured = run_cli("perplexity", "--json", to_score, cwd=tmp_path)
    assert measured.returncode == 0, measured
    report = json.loads(measured.stdout)
    assert PERPLEXITY_KEYS <= report.keys()
    assert report["mode"] == "stream"
    assert report["tokens"] == report["chars"] == sum(len(line) + 1 for line in lines)
    assert report["words"] == sum(len(line.split()) + 1 for line in lines)
    assert report["oov"] == 1  # '✓'
    assert report["ppl"] == pytest.approx(math.exp(report["nll"] / report["tokens"]), rel=1e-9)
    assert report["word_ppl"] == pytest.approx(math.exp(report["nll"] / report["words"]), rel=1e-9)
    assert report["bpc"] == pytest.approx(report["nll"] / report["chars"] / math.log(2), rel=1e-9)


def test_train_on_raw_text_prepares_into_the_cache(tmp_path: Path) -> None:
    cache = Path(os.environ["RNNLM_CACHE_DIR"])
    corpus, valid = tmp_path / "corpus.txt", tmp_path / "valid.txt"
    corpus.write_text(make_corpus(200, seed=6), encoding="utf-8")
    valid.write_text(make_corpus(20, seed=7), encoding="utf-8")
    trained = run_cli("train", corpus, "--valid", valid, "-o", "m", *TINY, cwd=tmp_path)
    assert trained.returncode == 0, trained
    prepared = list((cache / "prepared").iterdir())
    assert len(prepared) == 1
    meta = json.loads((prepared[0] / "meta.json").read_text(encoding="utf-8"))
    assert meta["splits"]["train"]["lines"] == 200 and meta["splits"]["valid"]["lines"] == 20
    config = json.loads((tmp_path / "m" / "config.json").read_text(encoding="utf-8"))
    assert config["corpus"]["splits"] == meta["splits"]
    latest = (Path(os.environ["RNNLM_HOME"]) / "latest").read_text(encoding="utf-8").strip()
    assert latest == str((tmp_path / "m").resolve())
