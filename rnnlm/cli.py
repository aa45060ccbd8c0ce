"""The `rnnlm` command line: one thin function per subcommand (parse, call the library, render).

Heavy libraries (torch, numpy) are imported inside the commands so that `rnnlm --help`
stays fast. Errors become one line on stderr: exit 1 for bad input, 2 for bad usage,
130 after Ctrl-C; `rnnlm score | head` ends quietly.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from rnnlm import __version__
from rnnlm.cells import CELL_NAMES, cells_help
from rnnlm.choices import LOG_BASES, NBEST_FORMATS, SAMPLE_FORMATS, SCORE_FORMATS, TOKENIZERS
from rnnlm.config import OPTIMIZERS, PRECISIONS, SCHEDULES, STRATEGIES, DynamicEvaluation, SamplingConfig
from rnnlm.defaults import MAX_RANDOM_SEED, PRESETS, SCORE_CHUNK_LINES, TRAIN_DEFAULTS, Preset, bounds, preset_named
from rnnlm.errors import InvalidOption, UserError
from rnnlm.fileio import ENCODING_ERRORS

app = typer.Typer(
    name="rnnlm",
    help="Train recurrent language models (LSTM, GRU, RNN, SRU, SRU++, Mogrifier LSTM) on plain text; sample, score and measure them.\n\n"
    "Log-probabilities are natural logs (nats) unless a base is chosen. Tokens include one end-of-line token "
    "per line; words are whitespace words plus one per line end; bits per character count Unicode code points "
    "including the newline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

MODEL_HELP = ("Model directory. Without it: the directory RNNLM_MODEL names, else the current project's latest model "
              "(named by the nearest models/latest from here upwards), else the user-wide latest ($RNNLM_HOME/latest); a line "
              "on stderr then says which model answered. 'rnnlm models' lists them.")


def complete_model_directory(incomplete: str) -> list[str]:
    """The shell's completions of a model directory (rnnlm.completion), imported only when asked."""
    from rnnlm.completion import model_directories

    return model_directories(incomplete)


ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", show_default=False, help=MODEL_HELP,
                                                     autocompletion=complete_model_directory)]
ModelsOption = Annotated[Optional[list[Path]], typer.Option(
    "--model", "-m", show_default=False, help=MODEL_HELP + " Repeat to combine several models.",
    autocompletion=complete_model_directory)]
WeightsOption = Annotated[Optional[str], typer.Option(
    "--weights", show_default=False,
    help="With several -m: comma-separated weights of the models' line log-probabilities, combined log-linearly "
    "(default: equal weights that sum to one).")]
MixOption = Annotated[Literal["loglinear", "linear"], typer.Option(
    "--mix", help="With several -m: loglinear: weighted sum of the models' line log-probabilities; linear: mix "
    "their token probabilities, p = sum of weight x p_model per token (models with the same tokenizer and "
    "direction only; weights summing to 1).")]
QuietOption = Annotated[bool, typer.Option(
    "--quiet", "-q", envvar="RNNLM_QUIET", show_envvar=True,
    help="Do not name on stderr the model used when -m does not (warnings and errors still appear).")]
DeviceOption = Annotated[str, typer.Option(help="Device: auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")]
EncodingErrorsOption = Annotated[Literal[ENCODING_ERRORS], typer.Option(
    "--encoding-errors", help="Invalid UTF-8 in the input: 'strict' stops with its byte offset and line; 'replace' substitutes U+FFFD.")]
TokenizerOption = Annotated[Optional[Literal[TOKENIZERS]], typer.Option(
    "--tokenizer", show_default=False,
    help="Tokenizer, built from the training text: char (Unicode characters), word (whitespace words), bpe or unigram "
    "(sentencepiece subwords with byte fallback) (default: char; word for the catalogue corpus ptb).")]
VocabSizeOption = Annotated[Optional[int], typer.Option(
    "--vocab-size", **bounds("vocab_size"), show_default=False,
    help="Vocabulary size, end-of-line and unknown tokens included (word, bpe, unigram) "
    "(default: every training word for word, 8000 for bpe and unigram).")]
MinCountOption = Annotated[int, typer.Option(
    "--min-count", **bounds("min_count"), help="Word tokenizer: keep only words seen at least this often in the training text.")]
SubwordAlphaOption = Annotated[float, typer.Option(
    "--subword-alpha", **bounds("subword_alpha"),
    help="Subword regularisation (bpe, unigram): train on sampled segmentations; bpe: BPE-dropout probability, "
    "unigram: sampling smoothing. 0: off.")]
SubwordSamplesOption = Annotated[int, typer.Option(
    "--subword-samples", **bounds("subword_samples"),
    help="With --subword-alpha: sampled encodings of the training text written; training reads one per epoch in turn.")]
ValidOption = Annotated[Optional[str], typer.Option("--valid", help="Validation text file (default: split off the corpus).")]
TestOption = Annotated[Optional[str], typer.Option("--test", help="Test text file (default: split off the corpus).")]
ValidFractionOption = Annotated[float, typer.Option(
    "--valid-fraction", **bounds("valid_fraction"), help="Without --valid/--test: fraction of lines, before the test lines at the end, held out for validation.")]
TestFractionOption = Annotated[float, typer.Option(
    "--test-fraction", **bounds("test_fraction"), help="Without --valid/--test: fraction of lines at the end held out for testing.")]
MirrorOption = Annotated[Optional[str], typer.Option(
    "--mirror", envvar="RNNLM_CORPUS_MIRROR", show_envvar=True,
    help="Folder holding local copies of the catalogue corpora (e.g. MIRROR/ptb/ptb.train.txt), used instead of downloading.")]


def ends_quietly_on_closed_pipe(command: Callable[..., None]) -> Callable[..., None]:
    """A reader that goes away (as in `rnnlm score | head`) ends the command quietly with success.

    Caught here, inside the command, because Click turns a broken pipe into exit code 1.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
            sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # nothing more reaches the closed pipe at exit
            sys.exit(0)

    return run


EpochsOption = Annotated[Optional[int], typer.Option(**bounds("epochs"), help="Passes over the training split (default: as many as --max-time allows).")]
MaxTimeOption = Annotated[Optional[str], typer.Option(help="Wall-clock budget such as 90s, 5m, 1h30m (default: 5m when --epochs is not given).")]
PatienceOption = Annotated[int, typer.Option(**bounds("patience"), help="Stop after this many evaluations without a better validation loss (0: never).")]
EvalIntervalOption = Annotated[Optional[str], typer.Option(help="Time between validations, e.g. 30s (default: a twentieth of --max-time, at least 5s; 30s with only --epochs).")]
EvalEveryOption = Annotated[Optional[int], typer.Option(**bounds("eval_every"), help="Steps between validations, instead of --eval-interval.")]
CheckpointIntervalOption = Annotated[str, typer.Option(help="Time between checkpoints (DIR/checkpoint, for --resume).")]
CheckpointEveryOption = Annotated[Optional[int], typer.Option(**bounds("checkpoint_every"), help="Steps between checkpoints, instead of --checkpoint-interval.")]
TIMING_OPTIONS = dict(  # the options of `train` that say how long and how often, which --resume may change
    epochs=EpochsOption, max_time=MaxTimeOption, patience=PatienceOption, eval_interval=EvalIntervalOption,
    eval_every=EvalEveryOption, checkpoint_interval=CheckpointIntervalOption, checkpoint_every=CheckpointEveryOption)
PREPARATION_OPTIONS = dict(  # the options of `prepare` that `train` takes too, with their defaults in rnnlm.defaults
    tokenizer=TokenizerOption, vocab_size=VocabSizeOption, min_count=MinCountOption, subword_alpha=SubwordAlphaOption,
    subword_samples=SubwordSamplesOption, valid=ValidOption, test=TestOption, valid_fraction=ValidFractionOption,
    test_fraction=TestFractionOption, encoding_errors=EncodingErrorsOption, mirror=MirrorOption)


def with_options(group: dict[str, Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command a group of options declared once (for `prepare` and `train`, or the timing of
    `train`), with the library's defaults (rnnlm.defaults); the command reads the ones given from
    its context (given_options), so they are not passed to it."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=TRAIN_DEFAULTS[name])
                 for name, annotation in group.items()]
        signature = inspect.signature(command, eval_str=True)

        @functools.wraps(command)
        def run(**options: Any) -> None:
            command(**{name: value for name, value in options.items() if name not in group})

        run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *added])  # type: ignore[attr-defined]
        return run

    return decorate


def piped_command(command: Callable[..., None]) -> Callable[..., None]:
    """Register a subcommand whose output may go to a pipe that closes early (`rnnlm score | head`)."""
    return app.command()(ends_quietly_on_closed_pipe(command))


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rnnlm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train recurrent language models on plain text; sample, score and measure them."""


@app.command()
@with_options(PREPARATION_OPTIONS)
def prepare(
    ctx: typer.Context,
    corpus: Annotated[list[str], typer.Argument(help="Text file(s) or directories of them, - for standard input, or a catalogue name: alice, tinyshakespeare, ptb, ptb-char.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write: new, empty, or an earlier prepare (whose files are replaced; files rnnlm did not write are kept, any other directory is refused).")],
) -> None:
    """Build the tokenizer and the token-id files (train.bin, valid.bin, test.bin, meta.json) from text.

    CORPUS may also be a directory: its files (not hidden, not in subdirectories) are read in name
    order. The tokenizer is built from the training split only; words or characters seen only in
    validation or test text are out of vocabulary there (never for bpe and unigram, which fall back
    to bytes). meta.json records, per split, tokens (end-of-line included), words (plus one per line
    end), characters (newlines included), lines and OOV tokens.
    """
    from rnnlm.display import PrepareDisplay
    from rnnlm.workflows import prepare as prepare_corpus

    prepared = prepare_corpus(corpus, output, reporter=PrepareDisplay(), **given_options(ctx, ("corpus", "output")))
    for split, counts in prepared.meta["splits"].items():
        typer.echo(f"{split}: {counts['tokens']:,} tokens, {counts['words']:,} words, {counts['chars']:,} characters, "
                   f"{counts['lines']:,} lines, {counts['oov']:,} OOV", err=True)
    if prepared.train_samples:
        typer.echo(f"train samples: {', '.join(f'{len(s):,}' for s in prepared.train_samples)} tokens", err=True)
    typer.echo(f"vocabulary: {prepared.tokenizer.vocab_size:,} tokens ({prepared.tokenizer.kind}); wrote {output}", err=True)


def given_options(ctx: typer.Context, apart: tuple[str, ...]) -> dict[str, Any]:
    """The options the user gave (on the command line or in the environment), for the library to
    apply over its own defaults; `apart` are those the command passes by themselves."""
    return {name: value for name, value in ctx.params.items()
            if name not in apart and ctx.get_parameter_source(name).name != "DEFAULT"}


PRESET_NAMES = ", ".join(PRESETS)
CellName = Literal[CELL_NAMES]  # type: ignore[valid-type]  # the registry's cells
MAX_BATCH_ROWS = 10_000  # beams or samples decoded side by side


@app.command()
@with_options(PREPARATION_OPTIONS)
@with_options(TIMING_OPTIONS)
def train(
    ctx: typer.Context,
    corpus: Annotated[Optional[list[str]], typer.Argument(help="Text file(s) or directories of them, a catalogue name (alice, tinyshakespeare, ptb, ptb-char), or a directory made by 'rnnlm prepare' (not with --resume).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model directory (default: models/NAME-CELL-TIME): new, empty, or an earlier model (whose files are replaced; files rnnlm did not write are kept, any other directory is refused). One run writes a directory at a time.")] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"A published configuration ({PRESET_NAMES}; 'rnnlm presets' lists their settings and sources). Options given on the command line override it.", show_default=False)] = None,
    cell: Annotated[CellName, typer.Option(help=cells_help())] = TRAIN_DEFAULTS["cell"],
    mogrifier_rounds: Annotated[Optional[int], typer.Option(**bounds("mogrifier_rounds"), help="mogrifier cell: rounds of gating between the input and the hidden state before each step (0: a plain LSTM) (default: 5).", show_default=False)] = TRAIN_DEFAULTS["mogrifier_rounds"],
    attention_memory: Annotated[Optional[int], typer.Option(**bounds("attention_memory"), help="sru++ cell: the positions each token attends to, itself and those before it, carried across windows in the recurrent state (default: --bptt).", show_default=False)] = TRAIN_DEFAULTS["attention_memory"],
    layers: Annotated[int, typer.Option(**bounds("layers"), help="Recurrent layers.")] = TRAIN_DEFAULTS["layers"],
    embedding_size: Annotated[Optional[int], typer.Option(**bounds("embedding_size"), help="Embedding size (default: chosen from the corpus size).")] = TRAIN_DEFAULTS["embedding_size"],
    hidden_size: Annotated[Optional[int], typer.Option(**bounds("hidden_size"), help="Hidden size (default: 256 below 500,000 training tokens or under a budget below 10 minutes, else 512).")] = TRAIN_DEFAULTS["hidden_size"],
    dropout: Annotated[Optional[float], typer.Option(**bounds("dropout"), help="Dropout on the top layer's outputs, and on the embeddings and between layers unless --input-dropout or --layer-dropout say otherwise (default: chosen from the corpus size, the vocabulary and the model size).")] = TRAIN_DEFAULTS["dropout"],
    input_dropout: Annotated[Optional[float], typer.Option(**bounds("input_dropout"), help="Dropout on the embeddings, the first layer's input (default: --dropout).")] = TRAIN_DEFAULTS["input_dropout"],
    layer_dropout: Annotated[Optional[float], typer.Option(**bounds("layer_dropout"), help="Dropout between recurrent layers (default: --dropout).")] = TRAIN_DEFAULTS["layer_dropout"],
    embedding_dropout: Annotated[float, typer.Option(**bounds("embedding_dropout"), help="Embedding dropout: drop whole word types from each batch (AWD-LSTM's dropoute).")] = TRAIN_DEFAULTS["embedding_dropout"],
    weight_dropout: Annotated[float, typer.Option(**bounds("weight_dropout"), help="DropConnect on the hidden-to-hidden weights (sru: the recurrent vectors), one mask per batch (AWD-LSTM's wdrop).")] = TRAIN_DEFAULTS["weight_dropout"],
    locked_dropout: Annotated[bool, typer.Option("--locked-dropout/--no-locked-dropout", help="Variational (locked) dropout: one mask per sequence, the same at every time step, for the input, between-layer and output dropouts.")] = TRAIN_DEFAULTS["locked_dropout"],
    ar: Annotated[float, typer.Option("--ar", **bounds("ar"), help="Activation regularisation: add ALPHA × mean square of the (dropped) top-layer outputs to the loss.")] = TRAIN_DEFAULTS["ar"],
    tar: Annotated[float, typer.Option("--tar", **bounds("tar"), help="Temporal activation regularisation: add BETA × mean square of the change in the top-layer outputs between time steps.")] = TRAIN_DEFAULTS["tar"],
    init_range: Annotated[Optional[float], typer.Option(**bounds("init_range"), help="Initialise every weight uniformly in ±R (default: torch's initialisation, with tied embeddings in ±0.1).")] = TRAIN_DEFAULTS["init_range"],
    softmax_head: Annotated[Optional[int], typer.Option(**bounds("softmax_head"), help="Clustered softmax: the N most frequent tokens (and one cluster token for the rest) get the first softmax; rarer tokens a second one, computed in training only for rare targets. Exact probabilities, a faster decoder for large vocabularies. 0: one plain softmax (default: chosen from the token frequencies when it at least halves the decoder's work, else 0).", show_default=False)] = TRAIN_DEFAULTS["softmax_head"],
    tie: Annotated[Optional[bool], typer.Option("--tie/--no-tie", help="Share the embedding and decoder weights (a projection bridges different sizes) (default: on for word-sized vocabularies).")] = TRAIN_DEFAULTS["tie"],
    bptt: Annotated[int, typer.Option(**bounds("bptt"), help="Tokens per truncated back-propagation window (35 for vocabularies over 1000 tokens).")] = TRAIN_DEFAULTS["bptt"],
    variable_bptt: Annotated[bool, typer.Option("--variable-bptt/--no-variable-bptt", help="Vary each window's length as AWD-LSTM does (about --bptt, one time in twenty about half of it, standard deviation 5 tokens), with the learning rate scaled to the length, so that windows start at every offset.")] = TRAIN_DEFAULTS["variable_bptt"],
    batch_size: Annotated[int, typer.Option(**bounds("batch_size"), help="Parallel streams per batch, shared out among torchrun processes (the global batch) (20 for vocabularies over 1000 tokens).")] = TRAIN_DEFAULTS["batch_size"],
    optimizer: Annotated[Literal[OPTIMIZERS], typer.Option(help="Optimiser: adamw; sgd; ntasgd: SGD that starts averaging the weights once the validation loss stops improving (see --nonmono), evaluating and saving the average. Vocabularies over 1000 tokens default to sgd.")] = TRAIN_DEFAULTS["optimizer"],
    lr: Annotated[float, typer.Option(**bounds("lr"), help="Peak learning rate (20 for vocabularies over 1000 tokens).")] = TRAIN_DEFAULTS["lr"],
    weight_decay: Annotated[float, typer.Option(**bounds("weight_decay"), help="Weight decay (adamw: decoupled, on matrices only; sgd, ntasgd: L2 on every weight) (0 for vocabularies over 1000 tokens).")] = TRAIN_DEFAULTS["weight_decay"],
    clip: Annotated[float, typer.Option(**bounds("clip"), help="Clip the gradient norm to this (0: off) (0.25 for vocabularies over 1000 tokens).")] = TRAIN_DEFAULTS["clip"],
    schedule: Annotated[Literal[SCHEDULES], typer.Option(help="Learning rate after warm-up: cosine decay to a tenth by the end of --epochs or --max-time, constant, plateau (halved after every validation that is not the best), or step (times --lr-decay each epoch after --decay-start).")] = TRAIN_DEFAULTS["schedule"],
    lr_decay: Annotated[float, typer.Option(**bounds("lr_decay"), help="step schedule: the factor applied to the learning rate at each epoch after --decay-start.")] = TRAIN_DEFAULTS["lr_decay"],
    decay_start: Annotated[int, typer.Option(**bounds("decay_start"), help="step schedule: epochs at the full learning rate.")] = TRAIN_DEFAULTS["decay_start"],
    nonmono: Annotated[int, typer.Option(**bounds("nonmono"), help="ntasgd: start averaging when a validation loss is worse than the best one from before the last N validations.")] = TRAIN_DEFAULTS["nonmono"],
    warmup_steps: Annotated[int, typer.Option(**bounds("warmup_steps"), help="Steps of linear learning-rate warm-up.")] = TRAIN_DEFAULTS["warmup_steps"],
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run whose model directory this is, from its checkpoint, with its saved settings; only the options that set how long and how often (--epochs, --max-time, --patience, --eval-*, --checkpoint-*) and --device may be given anew.", show_default=False)] = None,
    precision: Annotated[Literal[PRECISIONS], typer.Option(help="auto: bf16 autocast on CPUs with fast bf16 and on CUDA, else fp32. Weights stay fp32.")] = TRAIN_DEFAULTS["precision"],
    device: DeviceOption = "auto",
    random_seed: Annotated[int, typer.Option(**bounds("random_seed"), help="Seed for weights, dropout and batching.")] = TRAIN_DEFAULTS["random_seed"],
    reverse: Annotated[bool, typer.Option("--reverse", help="Train a backward model: every line's tokens in reverse order, its end of line still last; score, perplexity and rescore reverse their input for it, sample writes the text before --seed.")] = TRAIN_DEFAULTS["reverse"],
) -> None:
    """Train a model on raw text (prepared on the way and cached) or on a prepared directory.

    Teacher forcing over stateful truncated back-propagation batches; the weights with the lowest validation loss are
    kept. The model directory (config.json, model.safetensors, tokenizer.json, metrics.jsonl with losses in nats per
    token and peak memory in MiB), once it holds a model, becomes the latest one for sample, score, perplexity and
    rescore: its project's (models/latest, when it lies in a models/ folder) and the user's. Regularisation: dropout on
    the embeddings, between layers and on the outputs (by default chosen from the corpus; locked on request); embedding
    dropout, weight dropout, AR and TAR (off unless asked for or set by a preset).
    """
    from rnnlm.display import PrepareDisplay, TrainingDisplay
    from rnnlm.workflows import train as train_model

    if preset is not None and resume is None:  # with --resume, refused by the library
        typer.echo(preset_line(preset_named(preset)), err=True)
    train_model(corpus or None, output, preset=preset, resume=resume, reporter=TrainingDisplay(),
                prepare_reporter=PrepareDisplay(), **given_options(ctx, ("corpus", "output", "preset", "resume")))


def preset_line(preset: Preset) -> str:
    return f"preset {preset.name}: {preset.source}; published: {preset.published}"


def option_text(name: str, value: object) -> str:
    """A setting as the command-line option that gives it: --hidden-size 650, --no-tie."""
    option = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{option}" if value else f"--no-{option}"
    return f"--{option} {value:g}" if isinstance(value, float) else f"--{option} {value}"


@app.command()
def presets(
    name: Annotated[Optional[str], typer.Argument(help="Show only this preset.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per preset and line: name, source, published, model, training, notes.")] = False,
) -> None:
    """List the presets of 'rnnlm train --preset': each one's source, published result and settings."""
    from dataclasses import asdict

    chosen = [preset_named(name)] if name is not None else list(PRESETS.values())
    for index, preset in enumerate(chosen):
        if as_json:
            typer.echo(json.dumps(asdict(preset)))
            continue
        settings = " ".join(option_text(key, value) for key, value in {**preset.model, **preset.training}.items())
        typer.echo(("\n" if index else "") + f"{preset.name}\n  source: {preset.source}\n  published: {preset.published}\n"
                   f"  settings: {settings}" + (f"\n  note: {preset.notes}" if preset.notes else ""))


def load_chosen(model: Optional[Path], device: str, quiet: bool) -> Any:
    """The model -m names or rnnlm.project chooses; in the second case a line on stderr says which,
    once it has loaded (so a failure stays one line), before any output."""
    from rnnlm.checkpoint import load_model
    from rnnlm.inventory import notice
    from rnnlm.project import resolve_model
    from rnnlm.training import resolve_device

    chosen = resolve_model(model)
    loaded = load_model(chosen.path, str(resolve_device(device)))
    if not (quiet or chosen.named_by_user):
        typer.echo(notice(chosen), err=True)
    return loaded


def load_models(models: Optional[list[Path]], weights: Optional[str], device: str, quiet: bool,
                mix: str = "loglinear") -> Any:
    """The models of repeated -m (none: the one rnnlm.project chooses, named on stderr) and their weights,
    checked before any loads (rnnlm.combination.Combination)."""
    from rnnlm.combination import Combination, parse_weights

    chosen: list[Optional[Path]] = list(models) if models else [None]
    checked = parse_weights(weights, len(chosen), mix)
    return Combination([load_chosen(directory, device, quiet) for directory in chosen], checked, mix)


@piped_command
def sample(
    model: ModelOption = None,
    seed: Annotated[str, typer.Option(help="Prompt text the sample continues (any UTF-8; empty: start of a line).")] = "",
    strategy: Annotated[Literal[STRATEGIES], typer.Option(help="greedy: the most likely token each step; sample: draw from the distribution; beam: beam search for the most likely continuations.")] = SamplingConfig.strategy,
    temperature: Annotated[float, typer.Option(min=0.0, help="sample: divide the logits by this before drawing; 0 is greedy.")] = SamplingConfig.temperature,
    top_k: Annotated[int, typer.Option(min=0, help="sample: draw only among the k most likely tokens (0: all).")] = SamplingConfig.top_k,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="sample: draw only from the smallest set of most likely tokens whose probability reaches p (1: all).")] = SamplingConfig.top_p,
    beam_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH_ROWS, help="beam: hypotheses kept at each step.")] = SamplingConfig.beam_size,
    length_penalty: Annotated[float, typer.Option(help="beam: rank hypotheses by logprob / tokens^ALPHA (0: total log-probability, 1: per token); matters when --stop or --until-eol end them at different lengths.")] = SamplingConfig.length_penalty,
    length: Annotated[int, typer.Option(min=0, help="Tokens to generate after the seed (at most, with --stop or --until-eol).")] = SamplingConfig.length,
    num_samples: Annotated[int, typer.Option(min=1, max=MAX_BATCH_ROWS, help="Samples, generated together as one batch; with beam, the N best hypotheses (N at most --beam-size).")] = SamplingConfig.num_samples,
    stop: Annotated[Optional[list[str]], typer.Option(help="End a sample once its generated text contains this string, which is kept in the output (repeatable).")] = None,
    until_eol: Annotated[bool, typer.Option("--until-eol", help="End a sample at its first end of line, which is kept in the output.")] = False,
    output_format: Annotated[Literal[SAMPLE_FORMATS], typer.Option("--format", help="text: the seed and its continuation; jsonl: one object per sample with seed, text (the continuation), logprob, score, tokens, stopped and the settings.")] = "text",
    random_seed: Annotated[Optional[int], typer.Option(min=0, max=MAX_RANDOM_SEED, help="Seed for reproducible samples (default: fresh randomness, recorded in --format jsonl).")] = None,
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Generate text that continues --seed: greedy, sampled (temperature, then top-k, then top-p) or by beam search.

    Text output is the seed, then the continuation; a single greedy or sampled continuation
    appears as it is generated, several are separated by an empty line, and a stop string that
    ends a sample is part of it. The logprob of --format jsonl is log P(generated tokens |
    end-of-line, seed) under the model: natural log (nats), summed over the generated tokens,
    whatever the temperature or cut-offs. A backward model (train --reverse) writes the text
    before --seed instead, back to the start of its line at most, then the seed; --stop is refused.
    """
    from rnnlm.config import fresh_random_seed
    from rnnlm.generate import generate, seed_warning

    config = SamplingConfig(strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, length=length,
                            num_samples=num_samples, beam_size=beam_size, length_penalty=length_penalty,
                            stop=tuple(stop or ()), until_eol=until_eol,
                            random_seed=fresh_random_seed() if random_seed is None else random_seed)
    config.validate()
    loaded = load_chosen(model, device, quiet)
    warning = seed_warning(loaded.tokenizer, seed, "--seed")
    if warning:
        typer.echo(f"rnnlm: warning: {warning}", err=True)
    backward = loaded.model.config.reverse  # writes the text before the seed
    streams = output_format == "text" and num_samples == 1 and strategy != "beam" and not backward
    if streams:
        write_now(seed)
    results = generate(loaded.model, loaded.tokenizer, seed, config, on_text=write_now if streams else None)
    if output_format == "jsonl":
        write_sample_records(results, seed, config)
    else:
        write_samples(results, seed, backward, streams)


def write_now(text: str) -> None:
    """Text as it is generated: flushed, so that a reader sees it at once."""
    sys.stdout.write(text)
    sys.stdout.flush()


def write_sample_records(results: Any, seed: str, config: SamplingConfig) -> None:
    """sample --format jsonl: one object per sample, with the settings that reproduce it."""
    from dataclasses import asdict

    for result in results:
        record = {"seed": seed, "text": result.text, "logprob": result.logprob, "score": result.score,
                  "tokens": len(result.tokens), "stopped": result.stopped, **asdict(config)}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_samples(results: Any, seed: str, backward: bool, streamed: bool) -> None:
    """sample --format text: each sample with its seed (before it, or after it for a backward
    model), an empty line between samples; a streamed sample has been written already but its end."""
    for index, result in enumerate(results):
        text = result.text + seed if backward else seed + result.text
        separator = "\n" if index else ""
        sys.stdout.write(separator + ("" if streamed else text) + ("" if text.endswith("\n") else "\n"))


@piped_command
def score(
    file: Annotated[str, typer.Argument(help="Text to score, one item per line; - for standard input.")] = "-",
    model: ModelsOption = None,
    weights: WeightsOption = None,
    mix: MixOption = "loglinear",
    output_format: Annotated[Literal[SCORE_FORMATS], typer.Option("--format", help="tsv: LOGPROB<TAB>LINE; value: the number alone (for paste); jsonl: one object per line (text, logprob, tokens, words, chars, oov); kenlm: 'Total: LOG10PROB OOV: N' lines and KenLM query's closing perplexity summary.")] = "tsv",
    log_base: Annotated[Literal[LOG_BASES], typer.Option(help="Base of the logarithms printed (the kenlm format is always base 10).")] = "e",
    per_token: Annotated[bool, typer.Option("--per-token", help="Add each token's log-probability: jsonl keys token_logprobs and pieces; tab-indented PIECE<TAB>LOGPROB rows under each tsv/value line; KenLM's PIECE=ID 0 LOG10PROB fields.")] = False,
    utt_id: Annotated[bool, typer.Option("--utt-id", help="The first whitespace-separated field of each line is an identifier: printed first (jsonl: key id), never scored.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Print corpus totals on stderr: total log-probability, tokens, OOV, perplexity per token and word, bits per character, speed.")] = False,
    unbuffered: Annotated[bool, typer.Option("--unbuffered", help="Read, score and flush one line at a time, for interactive pipes (slower than batches).")] = False,
    chunk_lines: Annotated[int, typer.Option(min=1, max=1 << 20, help="Lines read, scored as length-sorted batches and written (then flushed) per chunk; bounds memory on endless input.")] = SCORE_CHUNK_LINES,
    device: DeviceOption = "auto",
    encoding_errors: EncodingErrorsOption = "strict",
    quiet: QuietOption = False,
) -> None:
    """Score each line on its own: log P(tokens of the line, end-of-line | end-of-line), from a fresh state.

    One output line per input line, in input order, empty lines included; a line of unknown tokens
    gets a score too. Invalid UTF-8 (without --encoding-errors replace) stops with an error after
    the lines before it are written. An empty input prints nothing. With several -m, a line's
    score is the weighted sum of the models' scores (--mix linear: the sum of its mixed token
    log-probabilities); tokens and OOV are counted by the first model.
    """
    import time

    from rnnlm.combination import combined_line_scores
    from rnnlm.fileio import iter_line_batches, iter_text_chunks, open_binary_input
    from rnnlm.formats import ScoreWriter, split_utterance_ids, summary_line
    from rnnlm.scoring import Perplexity

    if utt_id and output_format == "kenlm":
        raise typer.BadParameter("KenLM's format has no place for identifiers", param_hint="'--utt-id'")
    if per_token and model and len(model) > 1 and mix == "loglinear":
        raise typer.BadParameter("token log-probabilities belong to one model or a --mix linear mixture",
                                 param_hint="'--per-token'")
    models = load_models(model, weights, device, quiet, mix)
    writer = ScoreWriter(sys.stdout, models.first.tokenizer, output_format, log_base, per_token)
    totals = Perplexity("independent-lines")
    started = time.perf_counter()
    name = "<stdin>" if file == "-" else file
    with open_binary_input(file) as stream:
        chunks = iter_text_chunks(stream, name, encoding_errors, 1 << 20, by_line=unbuffered)
        for lines in iter_line_batches(chunks, 1 if unbuffered else chunk_lines):
            ids, texts = split_utterance_ids(lines) if utt_id else ([None] * len(lines), lines)
            for text, identifier, result in zip(texts, ids, combined_line_scores(models, texts, per_token)):
                writer.write(text, result, identifier)
                totals.add_line(result)
            sys.stdout.flush()
    writer.write_summary(totals)
    if summary and totals.tokens:
        typer.echo(summary_line(totals, log_base, time.perf_counter() - started), err=True)


@piped_command
def perplexity(
    file: Annotated[str, typer.Argument(help="Text file to measure; - for standard input.", show_default=False)],
    model: ModelsOption = None,
    weights: WeightsOption = None,
    mix: MixOption = "loglinear",
    independent_lines: Annotated[bool, typer.Option("--independent-lines", help="Score each line from a fresh state (equals the sum of 'rnnlm score'); default: one running stream.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: mode, tokens, words, chars, lines, oov, nll (total, nats), ppl (per token), word_ppl, bpc, ppl_excluding_oov, tokens_excluding_oov, nats_per_token.")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic evaluation (Krause et al. 2018): after scoring each segment of the stream, take one SGD step on it, so the model adapts to the text as it reads. Off by default.")] = False,
    dynamic_lr: Annotated[float, typer.Option(min=0.0, help="With --dynamic: the SGD learning rate of each adaptation step.")] = DynamicEvaluation.lr,
    dynamic_decay: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --dynamic: fraction of the way back to the trained weights after each step (0: none).")] = DynamicEvaluation.decay,
    dynamic_segment: Annotated[int, typer.Option(min=1, help="With --dynamic: tokens scored between two adaptation steps.")] = DynamicEvaluation.segment,
    device: DeviceOption = "auto",
    encoding_errors: EncodingErrorsOption = "strict",
    quiet: QuietOption = False,
) -> None:
    """Perplexity of a file per token and per word, and bits per character, with the counts behind each.

    Tokens include one end-of-line token per line; words are whitespace words plus one per line
    end; characters are Unicode code points, newlines included. Out-of-vocabulary tokens count
    in the main figures; a per-token perplexity without them is shown beside. With several -m,
    the total NLL is the weighted sum of the models' NLLs (--mix linear, with --independent-lines
    only: the NLL of the token-level mixture); tokens and OOV are the first model's.
    """
    from rnnlm.combination import combined_perplexity
    from rnnlm.display import perplexity_table
    from rnnlm.fileio import iter_text_chunks, open_binary_input

    adaptation = DynamicEvaluation(dynamic_lr, dynamic_decay, dynamic_segment) if dynamic else None
    if adaptation is not None:
        adaptation.validate()
    models = load_models(model, weights, device, quiet, mix)
    name = "<stdin>" if file == "-" else file
    with open_binary_input(file) as stream:
        result = combined_perplexity(models, iter_text_chunks(stream, name, encoding_errors), independent_lines,
                                     adaptation)
    if result.tokens == 0:
        raise UserError(f"{name}: is empty; nothing to measure")
    report = result.to_dict()
    if as_json:
        typer.echo(json.dumps(report))
    else:
        from rich.console import Console

        Console().print(perplexity_table(report, name))


@piped_command
def rescore(
    nbest: Annotated[str, typer.Argument(help="N-best list: utt-id<TAB>first-pass-score<TAB>hypothesis per line (with --lm-column N: score columns 3 to N before the hypothesis), the hypotheses of an utterance on consecutive lines; - for standard input.")] = "-",
    model: ModelsOption = None,
    weights: WeightsOption = None,
    mix: MixOption = "loglinear",
    lm_weight: Annotated[float, typer.Option(help="Weight of the LM log-probability (nats) in the new score.")] = 1.0,
    word_penalty: Annotated[float, typer.Option(help="Added to the new score once per whitespace word of the hypothesis.")] = 0.0,
    lm_column: Annotated[Optional[int], typer.Option(min=3, help="Add the score in this tab-separated field of each line (counted from 1: utt-id, first-pass score, then 3...; e.g. an n-gram model's log-prob), times --lm-column-weight; fields 3 to N are scores and the hypothesis is what follows field N (tsv format only).", show_default=False)] = None,
    lm_column_weight: Annotated[float, typer.Option(help="With --lm-column: weight of that column in the new score.")] = 1.0,
    every_hypothesis: Annotated[bool, typer.Option("--all", help="Print every hypothesis in input order: utt-id, first-pass score, [--lm-column score,] LM log-prob, new score, new rank, hypothesis.")] = False,
    input_format: Annotated[Literal[NBEST_FORMATS], typer.Option("--format", help="tsv: utt-id<TAB>first-pass-score<TAB>hypothesis; kaldi: Kaldi's n-best text, utt-id-N then the words, with --costs.")] = "tsv",
    costs: Annotated[Optional[str], typer.Option(help="With --format kaldi: the costs file, 'utt-id-N COST' on the line of each hypothesis (lower is better; first-pass score = -COST).", show_default=False)] = None,
    tune: Annotated[Optional[Path], typer.Option(help="References, utt-id<TAB>reference text: choose --lm-weight and --word-penalty on a grid (and, by coordinate search, --weights with several -m and --lm-column-weight with --lm-column) to minimise the word error rate, print a table of WER and sentence error rate on stderr (oracle, first pass, defaults, each model alone, chosen), then rescore with the chosen values (holds every n-best list in memory).", show_default=False)] = None,
    device: DeviceOption = "auto",
    encoding_errors: EncodingErrorsOption = "strict",
    quiet: QuietOption = False,
) -> None:
    """Rescore n-best lists: new score = first-pass + lm-weight x LM log-prob [+ lm-column-weight x column] + word-penalty x words.

    The LM log-prob is the line score of 'rnnlm score' (natural log, end of line included;
    several -m combine as there). For each utterance, in input order, prints
    utt-id<TAB>best hypothesis (ties: the earlier line). Input is streamed; utterances are
    batched for the model, and those before a malformed line are written before the error.
    """
    from rnnlm.combination import line_logprobs
    from rnnlm.display import rescoring_progress
    from rnnlm.fileio import iter_text_chunks, open_binary_input
    from rnnlm.rescoring import RescoreSettings, group_utterances, read_kaldi, read_tsv, rescore as rescore_lists, write_results

    settings = RescoreSettings(lm_weight, word_penalty, lm_column_weight)
    settings.validate()
    if tune is not None and (settings != RescoreSettings() or weights is not None):
        raise typer.BadParameter("--tune chooses --lm-weight, --word-penalty, --lm-column-weight and --weights itself",
                                 param_hint="'--tune'")
    if lm_column is None and lm_column_weight != 1.0:
        raise typer.BadParameter("weighs the column --lm-column names; give --lm-column", param_hint="'--lm-column-weight'")
    if lm_column is not None and input_format == "kaldi":
        raise typer.BadParameter("reads a column of the tsv format; Kaldi's n-best text has none",
                                 param_hint="'--lm-column'")
    if (input_format == "kaldi") != (costs is not None):
        raise typer.BadParameter("--format kaldi and --costs go together", param_hint="'--costs'")
    if costs == "-" and nbest == "-":
        raise typer.BadParameter("the n-best list and the costs cannot both be standard input", param_hint="'--costs'")
    models = load_models(model, weights, device, quiet, mix)
    name = "<stdin>" if nbest == "-" else nbest
    with open_binary_input(nbest) as stream, open_binary_input(costs or os.devnull) as cost_stream:
        chunks = iter_text_chunks(stream, name, encoding_errors)
        if costs is None:
            hypotheses = read_tsv(chunks, name, lm_column)
        else:
            costs_name = "<stdin>" if costs == "-" else costs
            hypotheses = read_kaldi(chunks, iter_text_chunks(cost_stream, costs_name, encoding_errors), name, costs_name)
        utterances = group_utterances(hypotheses, name)
        if tune is None:
            rescored = rescore_lists(utterances, functools.partial(line_logprobs, models), settings)
        else:
            rescored = _tuned(utterances, models, tune, encoding_errors, lm_column is not None)
        for results in rescoring_progress(rescored):
            write_results(sys.stdout, results, every_hypothesis, lm_column is not None)


def _tuned(utterances: Any, models: Any, references: Path, encoding_errors: str, column: bool) -> Any:
    """The utterances ranked with the settings tuned on `references`; the table on stderr."""
    from rnnlm.fileio import iter_text_chunks, open_binary_input
    from rnnlm.tuning import read_references, tune

    with open_binary_input(str(references)) as stream:
        texts = read_references(iter_text_chunks(stream, str(references), encoding_errors), str(references))
    chosen, table, ranked = tune(utterances, models, texts, str(references), column)
    for row in table:
        typer.echo(row, err=True)
    typer.echo(f"chosen: {chosen.options(column)}", err=True)
    return ranked


@piped_command
def models(
    directory: Annotated[Optional[Path], typer.Argument(help="A project directory (the one holding models/) or a folder of model directories (default: the current project's: where the nearest models/latest is, else ./models).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, an object per model directory: path, valid, problem, being_trained, writer_pid, corpus, tokenizer, cell, layers, hidden_size, parameters, val_nats_per_token, val_word_ppl, val_bpc, natural_units, training_s, trained_at, roles, default, default_reason.")] = False,
) -> None:
    """List a project's model directories and the user-wide latest, starring the one that sample, score,
    perplexity and rescore use there without -m, and why.

    Each row gives the corpus, tokenizer, cell and size, parameters, the best validation figure in
    the model's natural unit (perplexity per word for word models, bits per character for
    character models, both for subword models), training time and date. A directory that is not a
    usable model is listed with the reason; nothing is changed.
    """
    from rich.console import Console

    from rnnlm.display import models_table
    from rnnlm.inventory import project_inventory
    from rnnlm.project import models_folder, resolve_model, shown

    folder = models_folder(directory)
    try:
        chosen, unusable = resolve_model(None, start=directory), ""
    except UserError as error:
        chosen, unusable = None, str(error)
    listed = project_inventory(folder, chosen)
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in listed]))  # ASCII: any bytes of a path survive
        return
    if not any(info.path.parent == folder for info in listed):
        typer.echo(f"rnnlm: no model directories in {shown(folder)}", err=True)
    if listed:  # wide in a pipe or file, where nothing would fold the rows back
        Console(width=None if sys.stdout.isatty() else 240).print(models_table(listed, shown(folder)))
    used = next((info for info in listed if info.default), None)
    typer.echo(f"used here without -m: {shown(used.path)} ({used.default})" if used else f"used here without -m: none ({unusable})")


@app.command()
@ends_quietly_on_closed_pipe
def info(
    model: Annotated[Optional[Path], typer.Argument(help=MODEL_HELP, metavar="MODEL", show_default=False, autocompletion=complete_model_directory)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: path, cell, direction, layers, embedding_size, hidden_size, vocab_size, softmax_head, tie, parameters, tokenizer, corpus_sources, corpus_directory, train_tokens, valid_tokens, test_tokens, max_time_s, epochs, training_s, steps, epochs_completed, best_step, val_nats_per_token, val_ppl, val_word_ppl, val_bpc, precision, autocast, created_at, rnnlm_version.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Describe a model: cell and sizes, parameters, tokenizer and vocabulary, training corpus and
    its token counts, budget and time used, best validation figures, precision, creation time.

    Read from the model directory's files without loading the model, so it answers at once.
    Validation losses are in nats per token; perplexities per token and per word; bits per
    character count code points, newlines included. Unknown figures (a model from an older
    rnnlm) are shown as unknown (null in JSON).
    """
    from rnnlm.info import model_details
    from rnnlm.inventory import notice
    from rnnlm.project import resolve_model

    chosen = resolve_model(model)
    details = model_details(chosen.path)
    if not (quiet or chosen.named_by_user):
        typer.echo(notice(chosen), err=True)
    if as_json:
        typer.echo(json.dumps(details.to_json()))
    else:
        typer.echo("\n".join(details.text_lines()))


def _click_exception(name: str) -> type[Exception]:
    """Click's exception classes, wherever this Typer version keeps its Click (it may vendor one)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def main() -> None:
    """Entry point: run the app and turn every failure into a one-line message and an exit code."""
    usage_error, click_error = _click_exception("UsageError"), _click_exception("ClickException")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="rnnlm", standalone_mode=False)
        sys.stdout.flush()
    except UserError as error:
        _fail(command_line_text(error), 2 if isinstance(error, InvalidOption) else 1)
    except usage_error as error:
        if not error.format_message():  # type: ignore[attr-defined]
            sys.exit(2)  # no arguments at all: the help was shown
        context = getattr(error, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context else ""
        _fail(error.format_message().replace("\n", " ") + hint, 2)  # type: ignore[attr-defined]
    except click_error as error:
        _fail(error.format_message(), 1)  # type: ignore[attr-defined]
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except OSError as error:
        if os.environ.get("RNNLM_DEBUG"):
            raise
        where = f": {error.filename}" if error.filename else ""
        _fail(f"{error.strerror or error}{where}", 1)
    sys.exit(code if isinstance(code, int) else 0)


POSITIONAL = ("corpus",)  # arguments that are positional on the command line


def option_name(argument: str) -> str:
    """The command line's name for a library argument: batch_size is --batch-size, corpus CORPUS."""
    return argument.upper() if argument in POSITIONAL else "--" + argument.replace("_", "-")


def command_line_text(error: UserError) -> str:
    """A library error as the command line says it: the arguments it names (the one at fault, and
    any in backquotes) written as options, "--batch-size must be at least 1"."""
    message = str(error)
    if isinstance(error, InvalidOption) and error.argument:
        name = option_name(error.argument)
        message = f"{name}: {error.problem}" if error.argument in POSITIONAL else f"{name} {error.problem}"
    return re.sub(r"`([a-z][a-z_]*)`", lambda match: option_name(match.group(1)), message)


def _fail(message: str, code: int) -> None:
    print(f"rnnlm: error: {message}", file=sys.stderr)
    sys.exit(code)
