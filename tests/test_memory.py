"""Peak resident memory: measured for this process alone, recorded by every evaluation and
shown when training finishes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import make_corpus, run_cli

TINY = ["--epochs", "2", "--hidden-size", "16", "--embedding-size", "8", "--layers", "1", "--batch-size", "4",
        "--bptt", "16", "--precision", "fp32", "--device", "cpu", "--eval-every", "10"]
CHILD = """
from rnnlm.sizing import peak_rss_mb
before = peak_rss_mb()
block = b"x" * (200 << 20)  # written, so resident
print(before, peak_rss_mb())
"""


def test_peak_memory_is_this_process_own_and_in_mib() -> None:
    """A process started from a larger one reports its own peak (getrusage would report the
    parent's), and 200 MiB written raise it by 200."""
    held = b"y" * (600 << 20)
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, cwd=repo)
    before, after = map(float, child.stdout.split())
    assert before < 500 < len(held) >> 20  # torch and rnnlm take about 200-300 MiB; the parent's 600 are not counted
    assert 195 <= after - before <= 215


def test_training_records_and_shows_its_peak_memory(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(300, seed=3), encoding="utf-8")
    trained = run_cli("train", corpus, "-o", "model", *TINY, cwd=tmp_path)
    assert trained.returncode == 0, trained
    records = [json.loads(line) for line in (tmp_path / "model" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    peaks = [record["peak_rss_mb"] for record in records]
    assert len(peaks) > 1 and peaks == sorted(peaks)  # a high-water mark never falls
    assert 50 < peaks[0] < 4096  # MiB: torch alone is more than 50, this tiny model far less than 4 GiB
    shown = re.search(r"peak memory\W+([\d,]+) MiB resident", trained.stderr)
    assert shown is not None, trained.stderr
    assert float(shown.group(1).replace(",", "")) >= round(peaks[-1]) - 1
