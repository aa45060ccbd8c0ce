"""Named public corpora: the catalogue, download or local mirror, checksums, and standard splits.

`rnnlm prepare alice` fetches the files once into the user's cache, checks their sha256
and refuses a mismatch. With a mirror folder (`--mirror DIR` or RNNLM_CORPUS_MIRROR)
files are read from DIR/<mirror path> instead of the network; the layout is the one of
the catalogue's `mirror` fields (e.g. DIR/ptb/ptb.train.txt).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from rnnlm.preparation import PrepareOptions
from rnnlm.prepared_corpus import cache_home
from rnnlm.errors import UserError
from rnnlm.fileio import atomic_output

MIRROR_VARIABLE = "RNNLM_CORPUS_MIRROR"
DOWNLOAD_TIMEOUT_S = 60


def catalogue() -> dict[str, Any]:
    return json.loads(resources.files("rnnlm.catalogue").joinpath("catalogue.json").read_text(encoding="utf-8"))


@dataclass
class CorpusFiles:
    train: list[str]
    valid: str | None
    test: str | None


def resolve_sources(sources: list[str], options: PrepareOptions, mirror: str | None) -> tuple[list[str], PrepareOptions]:
    """Replace a catalogue name by its local files; with no --valid/--test, use its standard split."""
    known = catalogue()
    if len(sources) != 1 or sources[0] == "-" or Path(sources[0]).exists():
        for source in sources:
            if source != "-" and not Path(source).exists() and source in known:
                raise UserError(f"{source}: a catalogue corpus is prepared on its own, not with other files")
        return sources, options
    name = sources[0]
    if name not in known:
        hint = f"; catalogue corpora are {', '.join(sorted(known))}" if "/" not in name and "." not in name else ""
        raise UserError(f"{name}: no such file{hint}")
    files = fetch_corpus(name, known[name], mirror)
    if options.valid or options.test:
        return files.train, options
    return files.train, replace(options, valid=files.valid, test=files.test)


def default_tokenizer(sources: list[str]) -> str:
    """The tokenizer a corpus is usually modelled with: the catalogue's for a named corpus (word for ptb), else char."""
    if len(sources) == 1 and not Path(sources[0]).exists():
        return catalogue().get(sources[0], {}).get("tokenizer", "char")
    return "char"


def fetch_corpus(name: str, entry: dict[str, Any], mirror: str | None) -> CorpusFiles:
    """The corpus's files in the cache (fetched and verified once), cut into its standard split."""
    directory = cache_home() / "corpora" / name
    local = {filename: _fetch_file(filename, spec, directory, mirror) for filename, spec in entry["files"].items()}
    split = entry["split"]
    if split["kind"] == "files":
        return CorpusFiles([str(local[split["train"]])], str(local[split["valid"]]), str(local[split.get("test")]) if split.get("test") else None)
    train, valid = _split_by_characters(local[split["file"]], split["train"], directory / "split")
    return CorpusFiles([str(train)], str(valid), None)


def _fetch_file(filename: str, spec: dict[str, str], directory: Path, mirror: str | None) -> Path:
    target = directory / filename
    if target.exists() and _sha256(target) == spec["sha256"]:
        return target
    mirror = mirror or os.environ.get(MIRROR_VARIABLE)
    try:
        with atomic_output(target, "wb") as stream:
            if mirror:
                source = Path(mirror) / spec["mirror"]
                if not source.is_file():
                    raise UserError(f"{source}: not in the mirror folder {mirror} (expected layout: {spec['mirror']})")
                with source.open("rb") as data:
                    digest = _copy_hashing(data, stream)
            else:
                digest = _download(spec["url"], stream)
            if digest != spec["sha256"]:
                raise UserError(f"{filename}: checksum mismatch (sha256 {digest}, expected {spec['sha256']}); "
                                "the file was not used")
    except PermissionError as error:
        raise UserError(f"{directory}: cannot write the corpus cache ({error.strerror})") from None
    return target


def _download(url: str, stream: BinaryIO) -> str:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return _copy_hashing(response, stream)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"cannot download {url} ({reason}); set {MIRROR_VARIABLE} or --mirror to a local copy") from None


def _copy_hashing(source: BinaryIO, stream: BinaryIO) -> str:
    """Copy `source` to `stream`; the sha256 of what was copied."""
    digest = hashlib.sha256()
    while block := source.read(1 << 22):
        digest.update(block)
        stream.write(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return _copy_hashing(stream, _Discard())


class _Discard:
    def write(self, block: bytes) -> int:
        return len(block)


def _split_by_characters(path: Path, train_fraction: float, directory: Path) -> tuple[Path, Path]:
    """The first `train_fraction` of the characters (code points) and the rest, as two files."""
    train, valid = directory / "train.txt", directory / "valid.txt"
    stamp = directory / "source.sha256"
    source_digest = _sha256(path)
    if stamp.exists() and stamp.read_text() == source_digest and train.exists() and valid.exists():
        return train, valid
    data = path.read_bytes()
    starts = np.flatnonzero((np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80)  # first byte of each character
    cut = int(starts[int(len(starts) * train_fraction)]) if len(starts) else 0
    with atomic_output(train) as stream:
        stream.write(data[:cut])
    with atomic_output(valid) as stream:
        stream.write(data[cut:])
    with atomic_output(stamp) as stream:
        stream.write(source_digest.encode())
    return train, valid
