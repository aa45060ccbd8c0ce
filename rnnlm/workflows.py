"""The library's way in to preparing text and training: `rnnlm.prepare` and `rnnlm.train`.

Each takes the settings of its command as keyword arguments, named as the options are without
the dashes (`--random-seed` is `random_seed`), with the same defaults, presets and checks, because
the command line calls these very functions and both read the policy in rnnlm.defaults. Nothing is
printed: progress goes to the reporters given (the command line passes its displays), errors are
raised (rnnlm.errors), and an InvalidOption names the argument at fault.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from rnnlm.defaults import PREPARE_DEFAULTS, TrainSettings, check_arguments, resumed_settings
from rnnlm.errors import InvalidOption, UserError
from rnnlm.model_files import MODEL_DIRECTORY, default_output_dir
from rnnlm.outputs import claimed

if TYPE_CHECKING:
    from rnnlm.model import ModelConfig
    from rnnlm.preparation import PrepareOptions, PrepareReporter
    from rnnlm.prepared_corpus import PreparedCorpus
    from rnnlm.training import Reporter, TrainConfig, TrainResult

PathLike = Union[str, "os.PathLike[str]"]
Sources = Union[PathLike, Sequence[PathLike]]  # a file, a directory of files, a catalogue name, or several files


def prepare(sources: Sources, output: PathLike, *, reporter: PrepareReporter | None = None,
            **options: Any) -> PreparedCorpus:
    """Build the tokenizer and the token-id files of `rnnlm prepare` in `output` and open them.

    `sources`: text files, directories of them, "-" for standard input, or a catalogue name
    (alice, tinyshakespeare, ptb, ptb-char). `options`: those of `rnnlm prepare` (tokenizer,
    vocab_size, min_count, subword_alpha, subword_samples, valid, test, valid_fraction,
    test_fraction, encoding_errors, mirror).
    """
    from rnnlm.corpora import resolve_sources
    from rnnlm.preparation import prepare as prepare_corpus

    for name in options:
        if name not in PREPARE_DEFAULTS:
            raise InvalidOption(name, f"is not a preparation setting; the settings are {', '.join(PREPARE_DEFAULTS)}")
    check_arguments(options)
    files = source_list(sources)
    values = PREPARE_DEFAULTS | options
    resolved, preparation = resolve_sources(files, preparation_options(files, values), values["mirror"])
    return prepare_corpus(resolved, Path(output), preparation, reporter)


def train(corpus: Sources | None = None, output: PathLike | None = None, *, preset: str | None = None,
          max_time: float | str | None = None, resume: PathLike | None = None, reporter: Reporter | None = None,
          prepare_reporter: PrepareReporter | None = None, **options: Any) -> TrainResult:
    """Train a model as `rnnlm train` does, and return what the run achieved.

    `corpus`: text files, directories of them, a catalogue name, or a directory made by `prepare`.
    `output`: the model directory (default: models/NAME-CELL-TIME under the current directory).
    `preset`: a published configuration (rnnlm.defaults.PRESETS) that `options` override.
    `max_time`: seconds, or a duration such as "5m" (default: 5 minutes unless `epochs` is given).
    `resume`: a model directory whose run to continue, with its saved settings; only the timing
    settings (epochs, max_time, patience, eval_*, checkpoint_*) and device may be given with it.
    `options`: every other option of `rnnlm train`, named without dashes (hidden_size=650).
    """
    given = options | ({} if max_time is None else {"max_time": max_time})
    if resume is not None:
        if preset is not None:
            raise UserError("`resume` continues with the saved settings; `preset` cannot be given with it")
        return train_resumed(Path(resume), given | ({} if corpus is None else {"corpus": corpus}), reporter)
    if corpus is None:
        raise InvalidOption("corpus", "give a corpus to train on, or `resume` with a model directory")
    settings = TrainSettings.new_run(given, preset)  # refused here, before the corpus is read
    return train_new(source_list(corpus), output, settings, reporter, prepare_reporter)


def train_new(sources: list[str], output: PathLike | None, settings: TrainSettings, reporter: Reporter | None,
              prepare_reporter: PrepareReporter | None) -> TrainResult:
    """A new run: the corpus prepared (or found in the cache), then the model trained in `output`."""
    from rnnlm.corpora import resolve_sources
    from rnnlm.preparation import open_corpus

    values = settings.values
    preparation = preparation_options(sources, values)
    with claimed(Path(output) if output is not None else default_output_dir(sources, values["cell"]),
                 MODEL_DIRECTORY) as directory:
        corpus_data = open_corpus(*resolve_sources(sources, preparation, values["mirror"]), prepare_reporter)
        model_config, config = settings.configs(corpus_data)
        return run_training(corpus_data, directory, model_config, config, reporter, resume=False)


def train_resumed(directory: Path, changes: dict[str, Any], reporter: Reporter | None) -> TrainResult:
    """Continue the run saved in `directory` with `changes` to its timing settings."""
    with claimed(directory, MODEL_DIRECTORY) as claimed_directory:
        corpus_data, model_config, config = resumed_settings(claimed_directory, changes)
        return run_training(corpus_data, claimed_directory, model_config, config, reporter, resume=True)


def run_training(corpus: PreparedCorpus, directory: Path, model_config: ModelConfig, config: TrainConfig,
                 reporter: Reporter | None, resume: bool) -> TrainResult:
    """Train in `directory` (claimed by the caller), then close the torchrun process group, which
    train() leaves open for further runs (rnnlm.training.close_process_group)."""
    from rnnlm.training import close_process_group
    from rnnlm.training import train as train_model

    result = train_model(corpus, directory, model_config, config, reporter, resume=resume)
    close_process_group()
    return result


def source_list(sources: Sources) -> list[str]:
    """One source or several, as the list of strings the preparation reads."""
    listed = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not listed:
        raise InvalidOption("corpus", "names no text to read")
    return [os.fspath(source) for source in listed]


def preparation_options(sources: list[str], values: dict[str, Any]) -> PrepareOptions:
    """The preparation settings among `values`, the tokenizer defaulting to the corpus's usual one."""
    from rnnlm.corpora import default_tokenizer
    from rnnlm.preparation import PrepareOptions

    settings = {name: values[name] for name in PREPARE_DEFAULTS if name != "mirror"}
    return PrepareOptions(**settings | {"tokenizer": values["tokenizer"] or default_tokenizer(sources)})
