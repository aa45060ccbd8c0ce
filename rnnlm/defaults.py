"""The defaults policy of `rnnlm train` and `rnnlm.train`, in one place: every setting's default,
the published presets, the settings chosen from the corpus, and their precedence.

A setting comes from the caller (the command line or the keyword arguments), else from the
preset, else from the corpus (model size, dropout, tying, clustered softmax, and the classic SGD
recipe for word-sized vocabularies), else from the defaults below. Without --max-time or --epochs
a run has a five-minute budget. A resumed run keeps its saved settings: only how long and how
often (the timing settings) and the device may change, and --epochs alone clears the time budget.

Kept free of torch and numpy at import, so that the command line can show these defaults quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnlm.cells import CELL_NAMES, CELL_OPTIONS, cell_named, check_cell_options
from rnnlm.choices import TOKENIZERS
from rnnlm.config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig
from rnnlm.durations import parse_duration
from rnnlm.errors import InvalidOption, UserError
from rnnlm.fileio import ENCODING_ERRORS

if TYPE_CHECKING:
    import numpy as np

    from rnnlm.prepared_corpus import PreparedCorpus
    from rnnlm.model import ModelConfig

@dataclass(frozen=True)
class Preset:
    """A published configuration: model and training settings that a user's own options override."""

    name: str
    source: str
    published: str
    model: dict[str, object]  # keyed by `rnnlm train` option names
    training: dict[str, object]
    notes: str = ""


def _zaremba(name: str, size: int, dropout: float, init: float, clip: float, epochs: int, decay_start: int,
             lr_decay: float, published: str) -> Preset:
    return Preset(
        name=name, source="Zaremba, Sutskever and Vinyals (2014), Recurrent Neural Network Regularization, table 1",
        published=published,
        model=dict(cell="lstm", layers=2, embedding_size=size, hidden_size=size, dropout=dropout, tie=False,
                   init_range=init),
        training=dict(optimizer="sgd", lr=1.0, weight_decay=0.0, clip=clip, schedule="step", warmup_steps=0,
                      decay_start=decay_start, lr_decay=lr_decay, batch_size=20, bptt=35 if dropout else 20,
                      epochs=epochs, patience=0),
        notes="word-level PTB (rnnlm train ptb); the schedule is by epoch, so give no --max-time.",
    )


PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    _zaremba("zaremba-small", 200, 0.0, 0.1, 5.0, 13, 4, 0.5, "PTB test perplexity 114.5 (valid 120.7)"),
    _zaremba("zaremba-medium", 650, 0.5, 0.05, 5.0, 39, 6, 1 / 1.2, "PTB test perplexity 82.7 (valid 86.2)"),
    _zaremba("zaremba-large", 1500, 0.65, 0.04, 10.0, 55, 14, 1 / 1.15, "PTB test perplexity 78.4 (valid 82.2)"),
    Preset(
        name="awd-lstm",
        source="Merity, Keskar and Socher (2017), Regularizing and Optimizing LSTM Language Models, "
               "and their PTB command (github.com/salesforce/awd-lstm-lm)",
        published="PTB test perplexity 58.8 before fine-tuning (valid 60.7)",
        model=dict(cell="lstm", layers=3, embedding_size=400, hidden_size=1150, tie=True, dropout=0.4,
                   input_dropout=0.4, layer_dropout=0.25, embedding_dropout=0.1, weight_dropout=0.5,
                   locked_dropout=True, ar=2.0, tar=1.0),
        training=dict(optimizer="ntasgd", lr=30.0, weight_decay=1.2e-6, clip=0.25, schedule="constant",
                      warmup_steps=0, batch_size=20, bptt=70, variable_bptt=True, epochs=500, patience=0, nonmono=5),
        notes="without the paper's fine-tuning stage; the top layer is 1150 wide and projected to 400 for the "
              "tied decoder, where AWD-LSTM makes its last layer 400 wide.",
    ),
    Preset(
        name="sru-ptb",
        source="Lei, Zhang, Wang, Dai and Artzi (2018), Simple Recurrent Units for Highly Parallelizable Recurrence, "
               "and its PTB language-model script (github.com/asappresearch/sru)",
        published="PTB test perplexity 60.3 (6 layers, 24M parameters)",
        model=dict(cell="sru", layers=6, embedding_size=910, hidden_size=910, tie=True, dropout=0.7,
                   input_dropout=0.7, layer_dropout=0.2),
        training=dict(optimizer="sgd", lr=1.0, weight_decay=1e-5, clip=5.0, schedule="step", warmup_steps=0,
                      decay_start=175, lr_decay=0.98, batch_size=32, bptt=35, epochs=300, patience=0),
        notes="word-level PTB; the schedule is by epoch, so give no --max-time. The paper's SRU also drops its "
              "recurrent input inside each layer and starts the reset gates' bias at -3 (mostly highway); here "
              "dropout 0.2 falls between the layers and the biases start at 0. The paper stops after 30 epochs "
              "without a better validation perplexity.",
    ),
    Preset(
        name="srupp-enwik8",
        source="Lei (2021), When Attention Meets Fast Recurrence: Training Language Models with Reduced Compute, "
               "and its enwik8 script (github.com/asappresearch/sru, experiments/srupp_experiments)",
        published="enwik8 test 0.974 bits per character (base model, 10 layers, 108M parameters)",
        model=dict(cell="sru++", layers=10, embedding_size=3072, hidden_size=3072, tie=False, dropout=0.22,
                   attention_memory=1024),
        training=dict(optimizer="adamw", lr=3e-4, weight_decay=0.1, clip=1.0, schedule="cosine",
                      warmup_steps=16000, batch_size=32, bptt=1024, patience=0),
        notes="character level (rnnlm prepare --tokenizer char); the paper trains 400,000 steps of 32 x 1024 "
              "characters on 8 GPUs, about 150 epochs of enwik8's 90M training characters: give --epochs or "
              "--max-time. The paper uses RAdam, layer normalisation, attention dropout 0.22 and a cosine "
              "schedule to zero; here AdamW, no layer normalisation, no attention dropout, and the cosine "
              "schedule ends at a tenth of the rate.",
    ),
)}

MODEL_DEFAULTS: dict[str, Any] = dict(  # None: chosen from the corpus (or, for a cell's own setting, by the cell)
    cell="lstm", mogrifier_rounds=None, attention_memory=None, layers=2, embedding_size=None, hidden_size=None,
    dropout=None, input_dropout=None, layer_dropout=None, embedding_dropout=0.0, weight_dropout=0.0,
    locked_dropout=False, ar=0.0, tar=0.0, init_range=None, softmax_head=None, tie=None, reverse=False)
TRAINING_DEFAULTS: dict[str, Any] = {name: getattr(TrainConfig, name) for name in (
    "bptt", "variable_bptt", "batch_size", "optimizer", "lr", "weight_decay", "clip", "schedule", "lr_decay",
    "decay_start", "nonmono", "warmup_steps", "precision", "random_seed")}
TIMING_DEFAULTS: dict[str, Any] = dict(  # the settings a resumed run may change
    epochs=None, max_time=None, patience=TrainConfig.patience, eval_interval=None, eval_every=None,
    checkpoint_interval="10m", checkpoint_every=None, device=TrainConfig.device)
PREPARE_DEFAULTS: dict[str, Any] = dict(  # tokenizer None: the corpus's usual one (rnnlm.corpora.default_tokenizer)
    tokenizer=None, vocab_size=None, min_count=1, subword_alpha=0.0, subword_samples=4, valid=None, test=None,
    valid_fraction=0.05, test_fraction=0.0, encoding_errors="strict", mirror=None)
TRAIN_DEFAULTS: dict[str, Any] = MODEL_DEFAULTS | TRAINING_DEFAULTS | TIMING_DEFAULTS | PREPARE_DEFAULTS
DEFAULT_BUDGET = 300.0  # seconds of training when neither max_time nor epochs is given
SCORE_CHUNK_LINES = 2048  # lines `rnnlm score` and LanguageModel.score read, length-sort and score per chunk
MAX_RANDOM_SEED = 2**63 - 1  # torch's and numpy's generators take any seed up to this

BOUNDS: dict[str, tuple[float | None, float | None]] = dict(  # inclusive; None: unbounded on that side
    mogrifier_rounds=(0, None), attention_memory=(1, None), layers=(1, 100), embedding_size=(1, None),
    hidden_size=(1, None), dropout=(0.0, 0.95), input_dropout=(0.0, 0.95), layer_dropout=(0.0, 0.95),
    embedding_dropout=(0.0, 0.95), weight_dropout=(0.0, 0.95), ar=(0.0, None), tar=(0.0, None), init_range=(0.0, None),
    softmax_head=(0, None), bptt=(1, None), batch_size=(1, None), lr=(0.0, None), weight_decay=(0.0, None),
    clip=(0.0, None), lr_decay=(0.0, 1.0), decay_start=(0, None), nonmono=(1, None), warmup_steps=(0, None),
    epochs=(1, None), patience=(0, None), eval_every=(1, None), checkpoint_every=(1, None),
    random_seed=(0, MAX_RANDOM_SEED), vocab_size=(3, 1 << 31), min_count=(1, None), subword_alpha=(0.0, 1.0),
    subword_samples=(1, 100), valid_fraction=(0.0, 1.0), test_fraction=(0.0, 1.0))
CHOICES = dict(cell=CELL_NAMES, tokenizer=TOKENIZERS, encoding_errors=ENCODING_ERRORS, optimizer=OPTIMIZERS,
               schedule=SCHEDULES, precision=PRECISIONS)
DURATIONS = ("max_time", "eval_interval", "checkpoint_interval")  # seconds, or text such as "5m"


def bounds(name: str) -> dict[str, float]:
    """The range of a numeric setting as the command line's option takes it: min= and max=."""
    low, high = BOUNDS[name]
    return {key: value for key, value in (("min", low), ("max", high)) if value is not None}


def preset_named(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"{name!r} is not a preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of a new run, checked, as the caller and the preset left them; `configs` then
    resolves the full model and training settings once the corpus is read. The command line and
    the library both come here (through rnnlm.workflows.train), so they cannot disagree."""

    values: dict[str, Any]
    chosen: frozenset[str]  # set by the caller or the preset: no corpus-based default replaces these

    @classmethod
    def new_run(cls, given: dict[str, Any], preset: str | None = None) -> TrainSettings:
        """The caller's settings over the preset's over the defaults; refused here, before any corpus
        is read, if a name is unknown or a value out of range (the corpus-based ones are valid too)."""
        check_arguments(given)
        values, chosen = dict(TRAIN_DEFAULTS), set(given)
        if preset is not None:
            published = preset_named(preset)
            values |= published.model | published.training
            chosen |= set(published.model) | set(published.training)
        values |= given
        check_cell_options(values["cell"], values)
        training_config(values).validate()
        return cls(values, frozenset(chosen))

    def configs(self, corpus: PreparedCorpus) -> tuple[ModelConfig, TrainConfig]:
        """The model and training settings for this corpus, its defaults filling what is left open."""
        values = self.values | {name: value for name, value in default_training(corpus).items() if name not in self.chosen}
        config = training_config(values)
        cell_settings = {name: values[name] for name in CELL_OPTIONS if values[name] is not None}
        if "attention_memory" in cell_named(values["cell"]).options and values["attention_memory"] is None:
            cell_settings["attention_memory"] = values["bptt"]  # the window before, as SRU++ trains
        shape = {MODEL_SETTINGS.get(name, name): values[name] for name in MODEL_DEFAULTS if name not in CELL_OPTIONS}
        return default_model_config(corpus, config.max_time, **cell_settings, **shape), config


def check_arguments(given: dict[str, Any]) -> None:
    """Refuse a setting `rnnlm train` does not have, or a value of the wrong type or out of range."""
    for name, value in given.items():
        if name not in TRAIN_DEFAULTS:
            raise InvalidOption(name, f"is not a training setting; the settings are {', '.join(TRAIN_DEFAULTS)}")
        if value is None or name in DURATIONS:
            continue  # a duration is checked as it is read (seconds)
        choices = CHOICES.get(name)
        if choices is not None and value not in choices:
            raise InvalidOption(name, f"must be one of {', '.join(choices)}, got {value!r}")
        if isinstance(TRAIN_DEFAULTS[name], bool) or name == "tie":
            if not isinstance(value, bool):
                raise InvalidOption(name, f"must be True or False, got {value!r}")
        elif name in BOUNDS:
            check_number(name, value)


def check_number(name: str, value: Any) -> None:
    low, high = BOUNDS[name]
    whole = isinstance(low, int)
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        raise InvalidOption(name, f"must be {'a whole number' if whole else 'a number'}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        upper = f" and at most {high}" if high is not None else ""
        raise InvalidOption(name, f"must be at least {low}{upper}, got {value!r}")


def seconds(value: Any, argument: str) -> float | None:
    """A duration given as seconds or as text such as "5m" (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value, argument)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOption(argument, f"must be seconds or a duration such as '5m', got {value!r}")
    return float(value)


def timing_settings(values: dict[str, Any]) -> dict[str, Any]:
    """How long and how often, as TrainConfig takes them: the five-minute budget unless
    max_time or epochs is given, and a patience of 0 meaning none."""
    max_time = seconds(values["max_time"], "max_time")
    return dict(epochs=values["epochs"], max_time=max_time if max_time is not None or values["epochs"] else DEFAULT_BUDGET,
                patience=values["patience"] or None, eval_interval=seconds(values["eval_interval"], "eval_interval"),
                eval_every=values["eval_every"], checkpoint_every=values["checkpoint_every"], device=values["device"],
                checkpoint_interval=seconds(values["checkpoint_interval"], "checkpoint_interval"))


def training_config(values: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**{name: values[name] for name in TRAINING_DEFAULTS}, **timing_settings(values))


def resumed_settings(directory: Path, given: dict[str, Any]) -> tuple[PreparedCorpus, ModelConfig, TrainConfig]:
    """The corpus, model and training settings saved in a model directory, with the timing settings
    and the device the caller gives anew; any other setting is refused, and epochs alone clears
    the saved time budget, as it sets none for a new run."""
    from rnnlm.checkpoint import CONFIG, model_config_from, read_model_config
    from rnnlm.prepared_corpus import load_prepared

    check_arguments({name: value for name, value in given.items() if name != "corpus"})
    fixed = sorted(set(given) - set(TIMING_DEFAULTS) - {"mirror"})  # where catalogue copies lie changes nothing saved
    if fixed:
        named = ", ".join("the corpus" if name == "corpus" else f"`{name}`" for name in fixed)
        raise UserError(f"`resume` continues with the saved settings; {named} cannot change")
    changes = {name: value for name, value in timing_settings(TIMING_DEFAULTS | given).items() if name in given}
    if "epochs" in given and "max_time" not in given:
        changes["max_time"] = None
    saved = read_model_config(directory)
    try:
        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in saved["training"].items() if k in known} | changes)
        corpus_directory = Path(saved["corpus"]["directory"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{directory / CONFIG}: the training settings are not valid ({error})") from None
    if not corpus_directory.is_dir():
        raise UserError(f"{directory / CONFIG}: the prepared corpus the model was trained on, {corpus_directory}, "
                        "is missing; resuming needs it")
    return load_prepared(corpus_directory), model_config_from(saved, directory), config

MODEL_SETTINGS = {"ar": "activation_penalty", "tar": "temporal_penalty"}  # `rnnlm train` options named otherwise in ModelConfig


def default_model_config(corpus: PreparedCorpus, max_time: float | None = None, *, embedding_size: int | None = None,
                         hidden_size: int | None = None, dropout: float | None = None, tie: bool | None = None,
                         softmax_head: int | None = None, **settings: Any) -> ModelConfig:
    """A model sized to the corpus where the user left a choice open.

    Small corpora get a smaller, more strongly regularised network; character vocabularies
    gain nothing from tying, word-sized ones do, and large vocabularies get a clustered softmax.
    """
    train_tokens = len(corpus.splits["train"])
    vocab_size = corpus.tokenizer.vocab_size
    size, default_dropout = default_size(train_tokens, max_time, word_sized=vocab_size > 1000)
    hidden = hidden_size or size
    tied = tie if tie is not None else vocab_size > 1000
    embedding = embedding_size or (hidden if tied or vocab_size > 1000 else min(hidden, 128))
    if softmax_head is None:
        softmax_head = clustered_softmax_head(corpus.splits["train"], vocab_size, embedding if tied else hidden)
    from rnnlm.model import ModelConfig

    try:
        return ModelConfig(vocab_size=vocab_size, embedding_size=embedding, hidden_size=hidden,
                           dropout=default_dropout if dropout is None else dropout, tie=tied,
                           softmax_head=softmax_head or None, **settings)
    except ValueError as error:  # a setting that does not fit this corpus, such as a head as large as its vocabulary
        raise UserError(str(error)) from None


LONG_BUDGET = 600.0  # seconds of training from which a mid-sized corpus gets the larger model


def default_size(train_tokens: int, max_time: float | None, word_sized: bool) -> tuple[int, float]:
    """Hidden size and dropout for a corpus and a budget (None: no time limit).

    Below 500,000 tokens a small, strongly regularised model; up to 5,000,000 the larger model
    only when the budget gives it time to learn (10 minutes or more); word models overfit
    sooner than character models and keep more dropout.
    """
    if train_tokens < 500_000:
        return 256, 0.3
    if train_tokens < 5_000_000:
        if max_time is None or max_time >= LONG_BUDGET:
            return 512, 0.4 if word_sized else 0.2
        return 256, 0.3 if word_sized else 0.1
    return 512, 0.2 if word_sized else 0.1


WORD_TRAINING = dict(optimizer="sgd", lr=20.0, clip=0.25, weight_decay=0.0, batch_size=20, bptt=35)


def default_training(corpus: PreparedCorpus) -> dict[str, Any]:
    """Training settings that differ from TrainConfig's for this corpus: word-sized vocabularies
    (tied models) learn fastest with the classic recipe of plain SGD at rate 20, clipping at 0.25,
    20 streams of 35 tokens (Zaremba et al.; pytorch/examples)."""
    return dict(WORD_TRAINING) if corpus.tokenizer.vocab_size > 1000 else {}


def clustered_softmax_head(train_tokens: np.ndarray, vocab_size: int, features: int) -> int:
    """The head size that minimises the decoder's expected work per training token, or 0 where
    a single softmax is at most twice as much work.

    A token costs `head + 1` rows, and a rare one another `features` (its projection) plus
    `vocab_size - head`; the counts of the training tokens say how many are rare.
    """
    import numpy as np  # here, not at the top: the command line reads the presets without numpy

    if vocab_size < 1000 or len(train_tokens) == 0:
        return 0
    coverage = np.cumsum(np.bincount(train_tokens, minlength=vocab_size)) / len(train_tokens)
    heads = np.arange(1, vocab_size)
    work = heads + 1 + (1 - coverage[heads - 1]) * (vocab_size - heads + features)
    best = int(work.argmin())
    return int(heads[best]) if work[best] * 2 <= vocab_size else 0
