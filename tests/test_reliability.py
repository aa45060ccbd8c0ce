"""Never lose a user's files: a table of bad inputs and faults, each run as a real `rnnlm` process.

Every failing case must exit with the documented code (1: bad input, 2: a bad command line),
print exactly one stderr line starting `rnnlm: error:` and no traceback, and leave every file
that was in its directory byte-identical (the tree is hashed before and after). The cases run
concurrently, once per module; each test checks one of them. The tests after the table follow
whole scenarios: two writers racing, a writer killed while it holds the lock, a run retrained in
place, unusual output names, a diverging run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import CliResult, cli_env, make_corpus, run_cli

CHECKPOINT_FILES = ("checkpoint/model.safetensors", "checkpoint/optimizer.pt", "checkpoint/state.json",
                    "checkpoint/rng.safetensors", "config.json", "tokenizer.json", "metrics.jsonl")
DAMAGES = ("missing", "empty", "truncated", "random")
RESUME = ("train", "--resume", "{dir}/model", "--epochs", "9")
TINY = ("--hidden-size", "16", "--embedding-size", "8", "--layers", "1", "--batch-size", "4", "--bptt", "16",
        "--precision", "fp32", "--device", "cpu")


@dataclass
class Case:
    args: tuple[str, ...]  # formatted with dir (the case's own directory), good (a text file), corpus, prepared
    setup: Callable[[Path], None] | None = None  # prepares the case's directory
    code: int = 1
    expect: tuple[str, ...] = ()  # substrings of the one-line message ("a|b": either)


# ---------------------------------------------------------------------------------------
# Set-ups: each gets the case's directory, which already holds a copy of the trained model in model/


def damage(file: str, how: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / "model" / file
        if how == "missing":
            path.unlink()
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "truncated":
            data = path.read_bytes()
            cut = len(data) // 2
            if file.endswith(".jsonl"):  # through the middle of the last line: whole lines would be valid JSONL
                text = data.rstrip(b"\n")
                cut = (text.rfind(b"\n") + 1 + len(text)) // 2
            path.write_bytes(data[:cut] if len(data) > 1 else b"{")
        else:
            path.write_bytes(random.Random(file).randbytes(4096))
    return apply


def edit_json(file: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / "model" / file
        content = json.loads(path.read_text(encoding="utf-8"))
        change(content)
        path.write_text(json.dumps(content), encoding="utf-8")
    return apply


def write_files(files: dict[str, bytes | str]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        for name, content in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    return apply


def replace_tensors(file: str, tensors: Callable[[dict], dict]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        from safetensors.torch import load, save

        path = directory / "model" / file
        path.write_bytes(save(tensors(load(path.read_bytes()))))
    return apply


def wrong_carried_state(saved: dict) -> dict:
    import torch

    return saved | {"carried.0": torch.zeros(1, 1, 3)}


def weights_of_another_size(saved: dict) -> dict:
    return {name: tensor[..., :-1].contiguous() if tensor.dim() == 2 else tensor for name, tensor in saved.items()}


def sgd_optimizer_state(directory: Path) -> None:
    import torch

    path = directory / "model" / "checkpoint" / "optimizer.pt"
    state = torch.load(path, weights_only=True)
    state["param_groups"] = [{"lr": 0.1, "momentum": 0, "params": group["params"]} for group in state["param_groups"]]
    torch.save(state, path)


def other_tokenizer(directory: Path) -> None:
    path = directory / "model" / "tokenizer.json"
    content = json.loads(path.read_text(encoding="utf-8"))
    content["chars"] = content["chars"][:-1] + "\u263a"  # one symbol the corpus's tokenizer does not have
    path.write_text(json.dumps(content), encoding="utf-8")


def no_corpus(directory: Path) -> None:
    edit_json("config.json", lambda c: c["corpus"].update(directory=str(directory / "gone")))(directory)


def only_model(directory: Path) -> None:
    shutil.rmtree(directory / "model" / "checkpoint")


def prepared_into(directory: Path) -> None:
    shutil.copytree(PREPARED, directory / "prepared")


def locked_by_another_process(directory: Path) -> None:
    """A process that holds the model directory's writer lock (as a running `train` does) until the module ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory / "model")], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    HOLDERS.append(holder)


HOLD_LOCK = """
import sys, time
from pathlib import Path
from rnnlm import locks
with locks.exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""
HOLDERS: list[subprocess.Popen] = []
PREPARED = Path()  # set by the fixture: the session's prepared corpus


def cases() -> dict[str, Case]:
    table: dict[str, Case] = {}
    # every file --resume reads, each missing, empty, truncated and random
    for file in CHECKPOINT_FILES:
        for how in DAMAGES:
            if file == "metrics.jsonl" and how == "empty":
                continue  # an empty metrics.jsonl is what a new model directory holds: tested to resume below
            expect = (Path(file).name, "missing|empty|not|differs")
            table[f"resume-{file.replace('/', '-')}-{how}"] = Case(RESUME, damage(file, how), 1, expect)
    table |= {
        # wrong versions, shapes and tokenizers
        "resume-config-newer-version": Case(RESUME, edit_json("config.json", lambda c: c.update(version=99)), 1,
                                            ("config.json", "newer rnnlm")),
        "resume-config-not-rnnlm": Case(RESUME, edit_json("config.json", lambda c: c.pop("format")), 1,
                                        ("config.json", "not written by rnnlm")),
        "resume-weights-wrong-shape": Case(RESUME, replace_tensors("checkpoint/model.safetensors",
                                                                   weights_of_another_size), 1,
                                           ("model.safetensors", "do not fit")),
        "resume-optimizer-of-another-kind": Case(RESUME, sgd_optimizer_state, 1, ("optimizer.pt", "another optimiser")),
        "resume-carried-state-wrong-shape": Case(RESUME, replace_tensors("checkpoint/rng.safetensors",
                                                                         wrong_carried_state), 1,
                                                 ("rng.safetensors", "carried.0")),
        "resume-state-wrong-type": Case(RESUME, edit_json("checkpoint/state.json", lambda s: s.update(step="ten")), 1,
                                        ("state.json", "step")),
        "resume-state-unknown-field": Case(RESUME, edit_json("checkpoint/state.json", lambda s: s.update(colour=1)), 1,
                                           ("state.json", "colour")),
        "resume-other-tokenizer": Case(RESUME, other_tokenizer, 1, ("tokenizer.json", "differs")),
        "resume-corpus-gone": Case(RESUME, no_corpus, 1, ("config.json", "missing")),
        "resume-no-checkpoint": Case(RESUME, only_model, 1, ("no checkpoint",)),
        "resume-older-checkpoint-named": Case(RESUME, lambda d: (shutil.copytree(d / "model/checkpoint",
                                                                                 d / "model/.checkpoint.old"),
                                                                 damage("checkpoint/state.json", "random")(d)), 1,
                                              ("state.json", ".checkpoint.old")),
        "score-weights-wrong-shape": Case(("score", "{good}", "-m", "{dir}/model"),
                                          replace_tensors("model.safetensors", weights_of_another_size), 1,
                                          ("model.safetensors", "size mismatch")),
        "score-config-newer-version": Case(("score", "{good}", "-m", "{dir}/model"),
                                           edit_json("config.json", lambda c: c.update(version=2)), 1,
                                           ("newer rnnlm",)),
        "score-model-being-written": Case(("score", "{good}", "-m", "{dir}/model"),
                                          lambda d: (locked_by_another_process(d), (d / "model/config.json").unlink()),
                                          1, ("not a model yet",)),
    }
    table |= output_cases() | option_cases()
    return table


def output_cases() -> dict[str, Case]:
    """Output directories that are not rnnlm's to write, busy, or not directories."""
    fake_config = {"out/notes.txt": "keep\n", "out/config.json": "{}\n"}
    return {
        "train-into-foreign-config": Case(("train", "{corpus}", "-o", "{dir}/out", *TINY), write_files(fake_config), 1,
                                          ("config.json", "not written by rnnlm")),
        "train-into-foreign-directory": Case(("train", "{corpus}", "-o", "{dir}/out", *TINY),
                                             write_files({"out/notes.txt": "keep\n"}), 1, ("notes.txt", "did not write")),
        "train-into-prepared": Case(("train", "{corpus}", "-o", "{dir}/prepared", *TINY), prepared_into, 1,
                                    ("did not write",)),
        "train-into-a-file": Case(("train", "{corpus}", "-o", "{dir}/out", *TINY), write_files({"out": "text\n"}), 1,
                                  ("not a directory",)),
        "train-link-where-weights-go": Case(("train", "{corpus}", "-o", "{dir}/model", *TINY),
                                            lambda d: (write_files({"precious": "mine\n"})(d),
                                                       (d / "model/model.safetensors").unlink(),
                                                       (d / "model/model.safetensors").symlink_to(d / "precious")), 1,
                                            ("model.safetensors", "link")),
        "train-into-model-without-config": Case(("train", "{corpus}", "-o", "{dir}/model", *TINY),
                                                lambda d: (d / "model/config.json").unlink(), 1,
                                                ("config.json is missing",)),
        "train-while-another-writes": Case(("train", "{corpus}", "-o", "{dir}/model", *TINY), locked_by_another_process,
                                           1, ("being written by another rnnlm process (pid",)),
        "resume-while-another-writes": Case(RESUME, locked_by_another_process, 1, ("being written by another",)),
        "prepare-into-foreign-directory": Case(("prepare", "{corpus}", "-o", "{dir}/out"), write_files(fake_config), 1,
                                               ("did not write",)),
        "prepare-into-model": Case(("prepare", "{corpus}", "-o", "{dir}/model"), None, 1, ("did not write",)),
        "prepare-into-foreign-meta": Case(("prepare", "{corpus}", "-o", "{dir}/out"),
                                          write_files({"out/meta.json": '{"format": "other"}'}), 1,
                                          ("meta.json", "not written by rnnlm")),
        "prepare-into-root": Case(("prepare", "{corpus}", "-o", "/"), None, 1, ("root",)),
    }


def option_cases() -> dict[str, Case]:
    """Option values out of range: exit 2 when the command line alone is wrong, 1 when this machine is."""
    train = ("train", "{corpus}", "-o", "{dir}/out")
    trained = ("train", "{prepared}", "-o", "{dir}/out")
    sample = ("sample", "-m", "{dir}/model", "--length", "3")
    bad_train = {
        "layers-0": (("--layers", "0"), "--layers"), "layers-101": (("--layers", "101"), "--layers"),
        "hidden-0": (("--hidden-size", "0"), "--hidden-size"), "lr-0": (("--lr", "0"), "--lr"),
        "lr-nan": (("--lr", "nan"), "--lr"), "dropout-1": (("--dropout", "1"), "--dropout"),
        "batch-0": (("--batch-size", "0"), "--batch-size"), "bptt-0": (("--bptt", "0"), "--bptt"),
        "seed-negative": (("--random-seed", "-1"), "--random-seed"),
        "seed-2-63": (("--random-seed", str(2**63)), "--random-seed"),
        "seed-1e20": (("--random-seed", "1e20"), "--random-seed"),
        "valid-fraction-1": (("--valid-fraction", "1"), "--valid-fraction"),
        "fractions-sum-1": (("--valid-fraction", "0.5", "--test-fraction", "0.5"), "nothing to train on"),
        "max-time-0": (("--max-time", "0"), "--max-time"), "max-time-negative": (("--max-time", "-5m"), "--max-time"),
        "epochs-0": (("--epochs", "0"), "--epochs"), "lr-decay-0": (("--lr-decay", "0"), "--lr-decay"),
        "vocab-size-2": (("--tokenizer", "word", "--vocab-size", "2"), "--vocab-size"),
        "subword-samples-0": (("--subword-samples", "0"), "--subword-samples"),
        "device-meta": (("--device", "meta"), "--device"),
    }
    table = {f"train-{name}": Case((*train, *args), None, 2, (expect,)) for name, (args, expect) in bad_train.items()}
    bad_sample = {
        "top-p-0": ("--top-p", "0"), "top-p-1.5": ("--top-p", "1.5"), "temperature-negative": ("--temperature", "-1"),
        "top-k-negative": ("--top-k", "-1"), "beam-0": ("--beam-size", "0"), "samples-0": ("--num-samples", "0"),
        "samples-huge": ("--num-samples", "10001"), "length-negative": ("--length", "-1"),
        "seed-negative": ("--random-seed", "-1"),
    }
    table |= {f"sample-{name}": Case((*sample, *args), None, 2, (args[0],)) for name, args in bad_sample.items()}
    perplexity = ("perplexity", "{good}", "-m", "{dir}/model", "--dynamic")
    table |= {
        "perplexity-dynamic-lr-0": Case((*perplexity, "--dynamic-lr", "0"), None, 2, ("--dynamic-lr",)),
        "perplexity-dynamic-decay-1": Case((*perplexity, "--dynamic-decay", "1"), None, 2, ("--dynamic-decay",)),
        "perplexity-dynamic-segment-0": Case((*perplexity, "--dynamic-segment", "0"), None, 2, ("--dynamic-segment",)),
        "score-chunk-lines-0": Case(("score", "{good}", "-m", "{dir}/model", "--chunk-lines", "0"), None, 2,
                                    ("--chunk-lines",)),
        # sizes and devices this machine does not have: exit 1, with an estimate (found once the corpus is
        # read, so they train on the prepared corpus: raw text would add the cache's "prepared" line)
        "train-hidden-size-million": Case((*trained, "--hidden-size", "1000000"), None, 1, ("needs about", "GiB")),
        "train-layers-100-wide": Case((*trained, "--layers", "100", "--hidden-size", "20000"), None, 1,
                                      ("needs about",)),
        "train-softmax-head-over-vocabulary": Case((*trained, "--softmax-head", "500"), None, 1, ("softmax head",)),
        "train-device-mps": Case((*trained, "--device", "mps"), None, 1, ("mps",)),
        "sample-device-cuda-99": Case((*sample, "--device", "cuda:99"), None, 1, ("cuda",)),
    }
    return table


CASES = cases()


def tree_hashes(directory: Path) -> dict[str, str]:
    """Every entry below `directory`: a file's SHA-256, a link's target, a directory's mark."""
    hashes = {}
    for root, folders, files in os.walk(directory):
        for name in folders + files:
            path = Path(root) / name
            key = str(path.relative_to(directory))
            if path.is_symlink():
                hashes[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                hashes[key] = "dir"
            else:
                hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained) -> dict[str, tuple[CliResult, dict[str, str], dict[str, str]]]:
    """Each case's result, with its directory's tree before and after."""
    global PREPARED
    PREPARED = trained.prepared.directory
    base = tmp_path_factory.mktemp("reliability")
    good = base / "good.txt"
    good.write_text("the cat sat\non a mat\n", encoding="utf-8")
    corpus = base / "corpus.txt"
    corpus.write_text(make_corpus(120, seed=5), encoding="utf-8")
    env = cli_env(RNNLM_HOME=str(base / "home"), RNNLM_CACHE_DIR=str(base / "cache"))

    def prepare_case(name: str) -> tuple[Path, dict[str, str]]:
        directory = base / name
        shutil.copytree(trained.directory, directory / "model")
        if CASES[name].setup is not None:
            CASES[name].setup(directory)
        return directory, tree_hashes(directory)

    def run(item: tuple[str, tuple[Path, dict[str, str]]]) -> tuple[str, tuple[CliResult, dict, dict]]:
        name, (directory, before) = item
        values = {"dir": str(directory), "good": str(good), "corpus": str(corpus), "prepared": str(PREPARED)}
        result = run_cli(*(arg.format(**values) for arg in CASES[name].args), cwd=directory, env=env)
        return name, (result, before, tree_hashes(directory))

    prepared = {name: prepare_case(name) for name in CASES}
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(pool.map(run, prepared.items()))
    finally:
        for holder in HOLDERS:
            holder.kill()
            holder.wait()


def test_the_matrix_covers_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_fails_cleanly_and_changes_nothing(name: str, runs: dict) -> None:
    case = CASES[name]
    result, before, after = runs[name]
    assert result.returncode == case.code, result
    assert "Traceback" not in result.stderr, result
    assert len(result.stderr_lines) == 1 and result.stderr_lines[0].startswith("rnnlm: error: "), result
    message = result.stderr_lines[0].lower()
    for expected in case.expect:
        assert any(option.lower() in message for option in expected.split("|")), result
    assert after == before, f"{result}\nchanged: {sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}"


# ---------------------------------------------------------------------------------------
# Output directories as a user meets them: rnnlm's own files replaced, the user's kept, one writer
# at a time (two real `train` processes), and nothing a killed run leaves behind blocks the next one.

TINY_RUN = (*TINY, "--epochs", "1")


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
    first = run_cli("train", corpus, "-o", tmp_path / "m", *TINY_RUN, cwd=tmp_path)
    assert first.returncode == 0, first
    (tmp_path / "m" / "notes.txt").write_text("keep\n", encoding="utf-8")
    (tmp_path / "m" / "plots").mkdir()
    second = run_cli("train", corpus, "-o", tmp_path / "m", *TINY_RUN, "--hidden-size", "24", cwd=tmp_path)
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
    result = subprocess.run([sys.executable, "-m", "rnnlm", "train", str(corpus), "-o", name, *TINY_RUN], cwd=work,
                            capture_output=True, env=cli_env())
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    model = work / name
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [], "temporaries or locks left"
    scores(model, work)


def test_two_trains_into_one_directory_one_wins_the_other_stops_at_once(corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "c"
    args = [sys.executable, "-m", "rnnlm", "train", str(corpus), "-o", str(model), *TINY_RUN]
    first = subprocess.Popen([*args, "--epochs", "40", "--eval-every", "2"], stderr=subprocess.PIPE, env=cli_env())
    try:
        deadline = time.monotonic() + 120
        while not (model / "config.json").exists():  # its first evaluation wrote the model directory
            assert time.monotonic() < deadline and first.poll() is None, "the first run wrote no model"
            time.sleep(0.05)
        started = time.monotonic()
        second = run_cli("train", corpus, "-o", model, *TINY_RUN, "--hidden-size", "24", cwd=tmp_path,
                         env=cli_env(PYTHONPROFILEIMPORTTIME="1"))
        elapsed = time.monotonic() - started
        assert second.returncode == 1, second
        message = [line for line in second.stderr_lines if not line.startswith("import time:")]
        assert message == [f"rnnlm: error: {model} is being written by another rnnlm process (pid {first.pid})"]
        # it stops before the seconds that importing torch takes (2 s on an idle machine, with slack for load)
        assert " torch\n" not in second.stderr and elapsed < 10, elapsed
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
    result = run_cli("train", corpus, "-o", model, *TINY_RUN, cwd=tmp_path)
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
    result = run_cli("train", corpus, "-o", model, *TINY_RUN, "--epochs", "50", "--lr", "1e30", "--optimizer", "sgd",
                     cwd=tmp_path)
    assert result.returncode == 1, result
    assert len(result.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in result.stderr
    assert "rnnlm: error:" in result.stderr and "diverged" in result.stderr.lower()
    assert not os.path.exists(tmp_path / ".d.lock")


def test_a_temporary_renamed_while_the_directory_is_checked_is_no_obstacle(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A running writer's temporary can be listed and then renamed into place before it is looked at;
    the second writer must then reach the lock (and its "being written" error), not call it a foreign file."""
    from rnnlm import outputs
    from rnnlm.model_files import MODEL_DIRECTORY

    target = tmp_path / "model"
    target.mkdir()
    (target / MODEL_DIRECTORY.marker).write_text(json.dumps({"format": MODEL_DIRECTORY.format, "version": 1}))
    listed = os.listdir
    monkeypatch.setattr(outputs.os, "listdir", lambda path: [*listed(path), ".model.safetensors.h9z0v4y3.tmp"])
    outputs.check_output(target, MODEL_DIRECTORY)  # the listed temporary no longer exists: accepted
    (target / ".x.tmp").symlink_to(target / MODEL_DIRECTORY.marker)
    with pytest.raises(outputs.UserError, match="is not what rnnlm writes there"):
        outputs.check_output(target, MODEL_DIRECTORY)  # a temporary that is a link is still refused
