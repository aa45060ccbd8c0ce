"""The conformance suite every registered cell passes (rnnlm.cells.CELLS), and each cell's own checks.

For each cell: the carried state equals one long forward pass (fp32 and bf16), batch rows
keep their own state, summed line scores equal the independent-lines perplexity, beam width 1
equals greedy decoding, save/load is bit-exact, an interrupted run resumes bit-exactly, bf16
gradients follow fp32 ones, and two DistributedDataParallel processes take the step one
process takes. The models are tiny so that the suite stays quick on two cores.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import EVAL_LINES, make_corpus, run_cli
from rnnlm.cells import CELLS, cell_named
from rnnlm.cells.layer import State
from rnnlm.checkpoint import CHECKPOINT, LoadedModel, create_model_dir, load_checkpoint, load_model
from rnnlm.config import SamplingConfig
from rnnlm.preparation import PrepareOptions, prepare
from rnnlm.prepared_corpus import PreparedCorpus, load_prepared
from rnnlm.fileio import iter_text_chunks
from rnnlm.generate import generate
from rnnlm.model import ModelConfig, RNNLanguageModel, select_state
from rnnlm.scoring import perplexity, score_lines
from rnnlm.training import SilentReporter, TrainConfig, close_process_group, train

ALL_CELLS = list(CELLS)
RUN = TrainConfig(epochs=2, batch_size=4, bptt=12, lr=1e-2, warmup_steps=3, precision="fp32", device="cpu",
                  eval_every=20, checkpoint_every=1000, random_seed=2)
INTERRUPT_AT = 9  # mid-epoch, so that the checkpoint carries a recurrent state


def tiny_config(cell: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """Two layers, the first with an input narrower than its hidden size (SRU's projected highway);
    an attention memory shorter than the windows and the pieces, so that it is cut and carried."""
    settings: dict[str, Any] = dict(vocab_size=vocab_size, cell=cell, layers=2, embedding_size=8, hidden_size=12,
                                    dropout=0.1, weight_dropout=0.2, tie=True, mogrifier_rounds=3, attention_memory=5)
    return ModelConfig(**settings | overrides)


class LossLog(SilentReporter):
    """Every step's loss; with `interrupt_at`, a Ctrl-C to its own process at that step."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.interrupt_at = interrupt_at

    def step(self, info: dict[str, Any]) -> None:
        self.losses[info["step"]] = info["loss"]
        if info["step"] == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)


@dataclass
class CellRun:
    cell: str
    corpus: PreparedCorpus
    reference: LossLog  # an uninterrupted run
    resumed: LossLog  # the same run, interrupted and resumed from its checkpoint
    interrupted: Path
    loaded: LoadedModel  # the reference run's best model, loaded


@pytest.fixture(scope="module", params=ALL_CELLS)
def cell_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CellRun:
    """Per cell: one reference training run, and one interrupted mid-epoch and resumed."""
    cell, base = request.param, tmp_path_factory.mktemp(request.param)
    (base / "corpus.txt").write_text(make_corpus(90, seed=7), encoding="utf-8")
    corpus = prepare([str(base / "corpus.txt")], base / "prepared", PrepareOptions(valid_fraction=0.1))
    config = tiny_config(cell, corpus.tokenizer.vocab_size)
    reference = LossLog()
    train(corpus, base / "reference", config, RUN, reference)
    with pytest.raises(KeyboardInterrupt):
        train(corpus, base / "run", config, RUN, LossLog(INTERRUPT_AT))
    saved = load_checkpoint(base / "run", "cpu").tensors
    resumed = LossLog()
    train(corpus, base / "run", config, RUN, resumed, resume=True)
    assert {f"carried.{i}" for i in range(cell_named(cell).state_arity)} <= set(saved)
    return CellRun(cell, corpus, reference, resumed, base / "run", load_model(base / "reference"))


def random_model(cell: str, seed: int = 0) -> RNNLanguageModel:
    torch.manual_seed(seed)
    return RNNLanguageModel(tiny_config(cell, 30)).eval()


def run_in_pieces(model: RNNLanguageModel, tokens: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, State]:
    """Logits for `tokens` fed in pieces ending at `cuts`, the state carried from piece to piece."""
    pieces, state, start = [], None, 0
    for end in [*cuts, tokens.shape[1]]:
        output = model(tokens[:, start:end], state)
        logits, state = output.logits, output.state
        pieces.append(logits)
        start = end
    return torch.cat(pieces, 1), state


# ---------------------------------------------------------------------------------------
# the state


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_carried_state_equals_one_long_forward_pass(cell: str, precision: str) -> None:
    model = random_model(cell)
    tokens = torch.randint(0, 30, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        output = model(tokens)
        whole, final = output.logits, output.state
        pieces, carried = run_in_pieces(model, tokens, [1, 8, 21])
    assert len(final) == cell_named(cell).state_arity
    assert all(s.shape[:2] == (2, 3) for s in final)  # layers, batch
    tolerance = 1e-5 if precision == "fp32" else 3e-2  # bf16: a state rounded between pieces
    assert torch.allclose(pieces.float(), whole.float(), atol=tolerance, rtol=0)
    for a, b in zip(carried, final):
        assert torch.allclose(a.float(), b.float(), atol=tolerance, rtol=0)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_selected_rows_carry_their_own_state(cell: str) -> None:
    model = random_model(cell)
    tokens = torch.randint(0, 30, (4, 20), generator=torch.Generator().manual_seed(2))
    rows = torch.tensor([3, 0, 0, 2])
    with torch.no_grad():
        whole = model(tokens[rows]).logits
        state = model(tokens[:, :9]).state
        rest = model(tokens[rows, 9:], select_state(state, rows)).logits
    assert torch.allclose(rest, whole[:, 9:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_weight_dropout_drops_the_registered_weights_in_training_only(cell: str) -> None:
    model = random_model(cell)
    tokens = torch.randint(0, 30, (2, 6))
    for name in cell_named(cell).weight_dropped:
        assert isinstance(getattr(model.rnns[0], name), torch.nn.Parameter), name
    model.config.dropout = model.config.input_dropout = model.config.layer_dropout = 0.0
    with torch.no_grad():
        plain = model(tokens).logits
        model.train()
        dropped = model(tokens).logits
    assert not torch.allclose(plain, dropped)


# ---------------------------------------------------------------------------------------
# scoring, decoding, saving and resuming a trained model of each cell


def test_resume_after_an_interrupt_is_bit_exact(cell_run: CellRun) -> None:
    assert min(cell_run.resumed.losses) == INTERRUPT_AT + 1
    assert max(cell_run.resumed.losses) == max(cell_run.reference.losses)
    for step, loss in cell_run.resumed.losses.items():
        assert loss == cell_run.reference.losses[step], step


def test_summed_scores_equal_the_independent_lines_perplexity(cell_run: CellRun, tmp_path: Path) -> None:
    model, tokenizer = cell_run.loaded.model, cell_run.loaded.tokenizer
    scores = score_lines(model, tokenizer, EVAL_LINES)
    (tmp_path / "eval.txt").write_text("\n".join(EVAL_LINES) + "\n", encoding="utf-8")
    with (tmp_path / "eval.txt").open("rb") as stream:
        result = perplexity(model, tokenizer, iter_text_chunks(stream, "eval", chunk_bytes=40), independent_lines=True)
    assert math.isclose(sum(s.logprob for s in scores), -result.nll, rel_tol=1e-5)
    assert result.tokens == sum(s.tokens for s in scores)


def test_beam_of_one_equals_greedy_and_greedy_equals_a_full_pass(cell_run: CellRun) -> None:
    model, tokenizer = cell_run.loaded.model, cell_run.loaded.tokenizer
    greedy = generate(model, tokenizer, "the ", SamplingConfig(strategy="greedy", length=25))
    assert generate(model, tokenizer, "the ", SamplingConfig(strategy="beam", beam_size=1, length=25)) == greedy
    ids = [tokenizer.eol_id, *tokenizer.encode("the ").tolist()]
    with torch.no_grad():
        for _ in greedy[0].tokens:
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy[0].tokens == ids[-len(greedy[0].tokens):]


def test_save_and_load_are_bit_exact(cell_run: CellRun, tmp_path: Path) -> None:
    first = cell_run.loaded
    create_model_dir(tmp_path / "copy", first.model, first.tokenizer, first.config, {})
    second = load_model(tmp_path / "copy")
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name
    tokens = torch.arange(20)[None] % first.tokenizer.vocab_size
    with torch.no_grad():
        assert torch.equal(first.model(tokens).logits, second.model(tokens).logits)


def saved_bytes(model: RNNLanguageModel, rows: int, window: int, precision: torch.dtype | None) -> int:
    """The bytes of the tensors autograd keeps for the backward pass of one training window,
    the parameters themselves left out (each storage counted once)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    tokens = torch.randint(0, model.config.vocab_size, (rows, window + 1), generator=torch.Generator().manual_seed(1))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        with torch.autocast("cpu", precision or torch.float32, enabled=precision is not None):
            model(tokens[:, :-1], targets=tokens[:, 1:])
    return sum(kept.values())


@pytest.mark.parametrize("precision", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_the_memory_estimate_covers_what_training_keeps_per_token(cell: str, precision: torch.dtype | None) -> None:
    from rnnlm.sizing import saved_floats_per_token

    config = tiny_config(cell, 40, embedding_size=32, hidden_size=48, mogrifier_rounds=4, attention_memory=96)
    model = RNNLanguageModel(config).train()
    window = 20
    per_token = (saved_bytes(model, 12, window, precision) - saved_bytes(model, 6, window, precision)) / (6 * window)
    estimate = 4 * saved_floats_per_token(config, window)
    assert per_token <= estimate, (per_token, estimate)  # an upper estimate, in bf16 too
    if precision is None:
        assert estimate < 2 * per_token, (per_token, estimate)  # and not so loose that it refuses runs that fit


# ---------------------------------------------------------------------------------------
# bf16 training and DistributedDataParallel


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_bf16_gradients_follow_the_fp32_ones(cell: str) -> None:
    tokens = torch.randint(0, 30, (4, 16), generator=torch.Generator().manual_seed(3))
    gradients = []
    for enabled in (False, True):
        model = random_model(cell)
        with torch.autocast("cpu", torch.bfloat16, enabled=enabled):
            log_probs = model(tokens[:, :-1], targets=tokens[:, 1:]).target_log_probs
        (-log_probs.mean()).backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.cosine_similarity(gradients[0], gradients[1], 0) > 0.99


def ddp_worker(rank: int, world_size: int, port: int, prepared_dir: str, output: str) -> None:
    """Train a model of every cell, one after another, as one of two torchrun-like processes."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    corpus = load_prepared(Path(prepared_dir))
    for cell in ALL_CELLS:
        train(corpus, Path(output) / cell, ddp_config(cell, corpus), DDP_RUN)
    close_process_group()


DDP_RUN = replace(RUN, optimizer="sgd", lr=0.5, epochs=1, warmup_steps=0, eval_every=None, checkpoint_every=None)


def ddp_config(cell: str, corpus: PreparedCorpus) -> ModelConfig:
    return tiny_config(cell, corpus.tokenizer.vocab_size, dropout=0.0, weight_dropout=0.0)


def test_two_process_ddp_takes_the_same_step_as_one_process_for_every_cell(tmp_path: Path) -> None:
    from test_engine import free_port

    (tmp_path / "corpus.txt").write_text(make_corpus(30, seed=5), encoding="utf-8")
    corpus = prepare([str(tmp_path / "corpus.txt")], tmp_path / "prepared", PrepareOptions(valid_fraction=0.1))
    for cell in ALL_CELLS:
        assert train(corpus, tmp_path / "single" / cell, ddp_config(cell, corpus), DDP_RUN).steps >= 2
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), str(corpus.directory), str(tmp_path / "ddp")), nprocs=2)
    for cell in ALL_CELLS:
        torch.manual_seed(DDP_RUN.random_seed)
        initial = RNNLanguageModel(ddp_config(cell, corpus)).state_dict()
        one = load_checkpoint(tmp_path / "single" / cell, "cpu").weights
        two = load_checkpoint(tmp_path / "ddp" / cell, "cpu").weights
        for name, weight in one.items():
            change = weight - initial[name]
            assert (two[name] - weight).norm() <= 1e-5 * change.norm() + 1e-12, (cell, name)


# ---------------------------------------------------------------------------------------
# each cell's own checks


def test_sru_kernel_gradients_match_the_reference_in_float64() -> None:
    from rnnlm.cells.sru_recurrence import FusedRecurrence, recurrence_reference

    generator = torch.Generator().manual_seed(4)
    batch, steps, hidden = 3, 6, 70  # more than one block of hidden units
    inputs = [torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
              for shape in ((batch, steps, 3, hidden), (batch, steps, hidden), (4, hidden), (batch, hidden))]
    fused, reference = FusedRecurrence.apply(*inputs), recurrence_reference(*inputs)
    for a, b in zip(fused, reference):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(FusedRecurrence.apply, inputs)
    weights = [torch.randn(batch, steps, hidden, dtype=torch.float64, generator=generator), torch.randn(batch, hidden, dtype=torch.float64, generator=generator)]
    fused_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(FusedRecurrence.apply(*inputs), weights)), inputs)
    reference_grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(recurrence_reference(*inputs), weights)), inputs)
    for a, b in zip(fused_grads, reference_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_sru_cuda_path_matches_the_cpu_kernel() -> None:
    from rnnlm.cells.sru_recurrence import recurrence

    generator = torch.Generator().manual_seed(5)
    inputs = [torch.randn(shape, generator=generator) for shape in ((4, 9, 3, 33), (4, 9, 33), (4, 33), (4, 33))]
    on_cpu = recurrence(*inputs)
    on_gpu = recurrence(*(t.cuda() for t in inputs))
    for a, b in zip(on_cpu, on_gpu):
        assert torch.allclose(a, b.cpu(), atol=1e-5)


def test_mogrifier_with_no_rounds_is_the_plain_lstm() -> None:
    torch.manual_seed(6)
    lstm = RNNLanguageModel(tiny_config("lstm", 30, dropout=0.0)).eval()
    mogrifier = RNNLanguageModel(tiny_config("mogrifier", 30, dropout=0.0, mogrifier_rounds=0)).eval()
    mogrifier.load_state_dict(lstm.state_dict())
    tokens = torch.randint(0, 30, (3, 25), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected, actual = lstm(tokens), mogrifier(tokens)
    assert torch.allclose(actual.logits, expected.logits, atol=1e-6, rtol=0)
    for a, b in zip(actual.state, expected.state):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    rounds = RNNLanguageModel(tiny_config("mogrifier", 30, dropout=0.0, mogrifier_rounds=2)).eval()
    rounds.load_state_dict(lstm.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(rounds(tokens).logits, expected.logits, atol=1e-5)  # the rounds do change it


# ---------------------------------------------------------------------------------------
# the command line


def test_cell_help_and_errors(tmp_path: Path) -> None:
    shown = run_cli("train", "--help", env={**os.environ, "COLUMNS": "300"})
    assert all(name in shown.stdout for name in CELLS), shown
    unknown = run_cli("train", "corpus.txt", "--cell", "transformer", cwd=tmp_path)
    assert unknown.returncode == 2 and all(name in unknown.stderr for name in CELLS), unknown
    for option, cell, wrong in (("--mogrifier-rounds", "mogrifier", "-1"), ("--attention-memory", "sru++", "0")):
        refused = run_cli("train", "corpus.txt", "--cell", cell, option, wrong, cwd=tmp_path)
        assert refused.returncode == 2 and option in refused.stderr, refused
        refused = run_cli("train", "corpus.txt", "--cell", "lstm", option, "2", cwd=tmp_path)
        assert refused.returncode == 2 and f"applies to the {cell} cell only" in refused.stderr, refused
        assert len(refused.stderr_lines) == 1, refused


def test_a_model_of_an_unknown_cell_is_refused_in_one_line(cell_run: CellRun, tmp_path: Path) -> None:
    if cell_run.cell != ALL_CELLS[0]:
        pytest.skip("one cell is enough")
    import json
    import shutil

    shutil.copytree(cell_run.loaded.directory, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["model"]["cell"] = "quantum"
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    refused = run_cli("sample", "-m", tmp_path / "model", "--length", "3")
    assert refused.returncode == 1 and len(refused.stderr_lines) == 1, refused
    assert "'quantum'" in refused.stderr and "rnnlm 0." in refused.stderr, refused


def test_torch_cells_keep_the_weight_names_of_earlier_model_directories() -> None:
    names = set(RNNLanguageModel(ModelConfig(vocab_size=30, cell="lstm", layers=2, tie=False)).state_dict())
    per_layer = {f"rnns.{layer}.{kind}_{part}_l0" for layer in (0, 1) for kind in ("weight", "bias") for part in ("ih", "hh")}
    assert names == per_layer | {"embedding.weight", "decoder.weight", "decoder.bias"}
