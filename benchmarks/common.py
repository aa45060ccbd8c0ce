"""What every benchmark records beside its figures: the machine, the software and the command."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines() -> list[str]:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "none"
    return [
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, hardware bf16: {bf16}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"- load average (1 min) when the results were written: {os.getloadavg()[0]:.2f} "
        f"(the benchmark's own threads count in it; more means other work shared the machine)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `python {' '.join(sys.argv)}`",
    ]


def write_markdown(name: str, title: str, table: list[list[str]], notes: list[str]) -> Path:
    """Write benchmarks/results/NAME.md: a title, the machine, a table and notes; print it too."""
    header, *rows = table
    lines = [f"# {title}", "", *machine_lines(), "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|", *("| " + " | ".join(row) + " |" for row in rows), ""]
    lines += notes
    text = "\n".join(lines).rstrip() + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    print(text)
    return path
