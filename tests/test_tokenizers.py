"""Word and subword tokenizers, prepare at any scale, and the corpus catalogue.

Round trips are property-based; the subword models are tiny (a few hundred pieces trained
on a few kilobytes) so that the whole module stays fast. Nothing here reads /work/shared
or the network: the catalogue is exercised through a fake mirror folder.
"""

from __future__ import annotations

import json
import os
import re
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_corpus, run_cli
from rnnlm.preparation import PrepareOptions, prepare
from rnnlm.prepared_corpus import load_prepared
from rnnlm.errors import UserError
from rnnlm.tokenizers import (
    TOKENIZER_KINDS,
    BpeTokenizer,
    CharTokenizer,
    TokenizerSettings,
    UnigramTokenizer,
    WordTokenizer,
    count_words,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parent.parent
SUBWORD_VOCAB = 350  # 256 bytes, end-of-line, unknown, the corpus's characters and a few dozen merges


def normalise(text: str) -> str:
    """What a word tokenizer gives back: each line's words joined by single spaces."""
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


@pytest.fixture(scope="module")
def corpus_text() -> str:
    return make_corpus(300, seed=3)


@pytest.fixture(scope="module")
def subword(corpus_text: str) -> dict[str, BpeTokenizer | UnigramTokenizer]:
    settings = TokenizerSettings(vocab_size=SUBWORD_VOCAB)
    return {kind: train_tokenizer(kind, [corpus_text], settings) for kind in ("bpe", "unigram")}  # type: ignore[misc]


def split_ids(prepared, split: str) -> list[int]:  # type: ignore[no-untyped-def]
    return np.asarray(prepared.splits[split]).tolist()


# ---------------------------------------------------------------------------------------
# Round trips


@given(st.text(max_size=300))
def test_char_round_trips_text_it_was_trained_on(text: str) -> None:
    tokenizer = CharTokenizer.train([text])
    assert tokenizer.decode(tokenizer.encode(text).tolist()) == text


@given(st.text(max_size=300))
def test_word_round_trips_whitespace_normalised_text(text: str) -> None:
    tokenizer = WordTokenizer.train([text])
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids.tolist()) == normalise(text)
    assert tokenizer.decode(tokenizer.encode(normalise(text)).tolist()) == normalise(text)
    lines = text.split("\n")
    assert len(ids) == sum(len(line.split()) for line in lines) + len(lines) - 1  # one token per word and newline


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@given(text=st.text(max_size=300))
def test_subword_round_trips_any_text_and_never_needs_the_unknown_token(subword, kind: str, text: str) -> None:
    tokenizer = subword[kind]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids.tolist()) == text
    assert not np.any(ids == tokenizer.unk_id)  # byte fallback
    assert np.count_nonzero(ids == tokenizer.eol_id) == text.count("\n")


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("text", [
    "  two leading spaces", "trailing spaces   ", "inner   runs \t of\u3000 space", " ", "",
    "a literal \u2581 and \u2581\u2581x\u2581", "unseen: ✓ ☃ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x01 \r",
    "\n\nempty lines\n\n", "no final newline\nsecond",
])
def test_subword_round_trips_awkward_whitespace_and_unseen_characters(subword, kind: str, text: str) -> None:
    tokenizer = subword[kind]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids.tolist()) == text
    assert not np.any(ids == tokenizer.unk_id)


def test_subword_decoding_is_concatenation(subword, corpus_text: str) -> None:
    """No dummy prefix: decoding any split of the ids and joining gives the whole text."""
    tokenizer = subword["bpe"]
    ids = tokenizer.encode(corpus_text[:500]).tolist()
    assert "".join(tokenizer.decode(ids[i:i + 7]) for i in range(0, len(ids), 7)).encode() == corpus_text[:500].encode()


@given(st.text(max_size=300))
def test_vectorised_word_count_matches_str_split(text: str) -> None:
    assert count_words(text) == len(text.split())


def test_every_whitespace_code_point_is_below_u3001() -> None:
    """The vectorised word boundaries rely on it."""
    assert not any(chr(c).isspace() for c in range(0x3001, 0x110000))


# ---------------------------------------------------------------------------------------
# The word vocabulary


PTB_LIKE_TRAIN = " the cat <unk> sat \n the <unk> dog \n a cat \n\n"


def test_word_ids_specials_first_then_by_count_ties_by_string() -> None:
    tokenizer = WordTokenizer.train([PTB_LIKE_TRAIN])
    # counts: the 2, cat 2, <unk> 2 (the unknown token), sat 1, dog 1, a 1
    assert [tokenizer.piece(i) for i in range(tokenizer.vocab_size)] == ["<eol>", "<unk>", "cat", "the", "a", "dog", "sat"]
    assert tokenizer.vocab_size == 7  # 6 distinct words, <unk> among them, plus end-of-line
    ids = tokenizer.encode(" the <unk> zebra \n")
    assert ids.tolist() == [3, 1, 1, 0]  # a literal <unk> and an unseen word are the unknown token
    assert tokenizer.decode(ids.tolist()) == "the <unk> <unk>\n"


@pytest.mark.parametrize("vocab_size, min_count, words", [
    (5, 1, ["cat", "the", "a"]),  # the cap counts end-of-line and unknown
    (None, 2, ["cat", "the"]),
    (3, 2, ["cat"]),
])
def test_word_vocab_size_and_min_count(vocab_size: int | None, min_count: int, words: list[str]) -> None:
    tokenizer = WordTokenizer.train([PTB_LIKE_TRAIN], TokenizerSettings(vocab_size=vocab_size, min_count=min_count))
    assert tokenizer.words == words
    assert tokenizer.vocab_size == len(words) + 2


def test_prepare_word_counts_ptb_style(tmp_path: Path) -> None:
    """Tokens are words plus one per line; PTB's literal <unk> is the unknown token and counted as OOV."""
    files = {"train": PTB_LIKE_TRAIN, "valid": " the dog <unk> \n a zebra \n", "test": " cat \n"}
    for name, text in files.items():
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    prepared = prepare([str(tmp_path / "train.txt")], tmp_path / "p",
                       PrepareOptions(tokenizer="word", valid=str(tmp_path / "valid.txt"), test=str(tmp_path / "test.txt")))
    assert prepared.meta["vocab_size"] == prepared.tokenizer.vocab_size == 7
    for name, text in files.items():
        counts = prepared.meta["splits"][name]
        assert counts["tokens"] == counts["words"] == len(text.split()) + text.count("\n")
        assert prepared.tokenizer.decode(split_ids(prepared, name)) == normalise(text).replace("zebra", "<unk>")
    assert prepared.meta["splits"]["train"]["oov"] == 2
    assert prepared.meta["splits"]["valid"]["oov"] == 2  # <unk> and zebra


def test_a_vocabulary_beyond_65536_is_stored_as_uint32(tmp_path: Path) -> None:
    corpus = tmp_path / "wide.txt"
    corpus.write_text("".join(f"w{i} w{i + 1} w{i + 2}\n" for i in range(0, 70_000, 3)), encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(tokenizer="word", valid_fraction=0.0))
    assert prepared.tokenizer.vocab_size == 70_002 + 2
    assert prepared.meta["dtype"] == "uint32" and prepared.splits["train"].dtype == np.uint32
    ids = split_ids(prepared, "train")
    assert max(ids) == prepared.tokenizer.vocab_size - 1
    assert prepared.tokenizer.decode(ids) == corpus.read_text(encoding="utf-8")
    small = prepare([str(corpus)], tmp_path / "q", PrepareOptions(tokenizer="word", vocab_size=65_536, valid_fraction=0.0))
    assert small.meta["dtype"] == "uint16" and small.tokenizer.vocab_size == 65_536


# ---------------------------------------------------------------------------------------
# Subword tokenizers in prepare


@pytest.fixture(scope="module")
def prepared_kinds(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> dict[str, object]:
    """The same corpus prepared with every tokenizer (10% validation, 10% test)."""
    base = tmp_path_factory.mktemp("kinds")
    corpus = base / "corpus.txt"
    corpus.write_text(corpus_text + "unseen ✓ 日本語 at the end\n" * 3, encoding="utf-8")
    return {
        kind: prepare([str(corpus)], base / kind, PrepareOptions(
            tokenizer=kind, valid_fraction=0.1, test_fraction=0.1,
            vocab_size=SUBWORD_VOCAB if kind in ("bpe", "unigram") else None))
        for kind in TOKENIZER_KINDS
    }


def test_every_tokenizer_counts_the_same_words_characters_and_lines(prepared_kinds) -> None:
    """Per-word perplexity and bits per character divide by the same numbers whatever the tokenizer."""
    word = prepared_kinds["word"].meta["splits"]  # type: ignore[attr-defined]
    for kind, prepared in prepared_kinds.items():
        for split, counts in prepared.meta["splits"].items():  # type: ignore[attr-defined]
            assert {k: counts[k] for k in ("words", "chars", "lines")} == \
                   {k: word[split][k] for k in ("words", "chars", "lines")}, (kind, split)
        assert prepared.meta["splits"]["test"]["words"] > 0  # type: ignore[attr-defined]
    assert all(word[split]["tokens"] == word[split]["words"] for split in word)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_splits_decode_to_the_exact_text_with_no_oov(prepared_kinds, corpus_text: str, kind: str) -> None:
    prepared = prepared_kinds[kind]
    text = "".join(prepared.tokenizer.decode(split_ids(prepared, s)) for s in ("train", "valid", "test"))  # type: ignore[attr-defined]
    assert text == corpus_text + "unseen ✓ 日本語 at the end\n" * 3
    assert all(c["oov"] == 0 for c in prepared.meta["splits"].values())  # type: ignore[attr-defined]
    assert prepared.meta["vocab_size"] <= SUBWORD_VOCAB  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["word", "bpe", "unigram"])
def test_tokenizers_save_as_json_and_load_identically(prepared_kinds, kind: str, tmp_path: Path) -> None:
    tokenizer = prepared_kinds[kind].tokenizer  # type: ignore[attr-defined]
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["kind"] == kind
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    sample = "the cat sat on ✓ naïve\n  spaced  \n"
    assert loaded.encode(sample).tolist() == tokenizer.encode(sample).tolist()
    assert loaded.vocab_size == tokenizer.vocab_size
    assert [loaded.piece(i) for i in range(loaded.vocab_size)] == [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]


def test_a_damaged_sentencepiece_model_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "bpe", "model": "bm90IGEgbW9kZWw="}), encoding="utf-8")
    with pytest.raises(UserError, match="not a valid rnnlm tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_a_subword_vocabulary_too_small_for_the_bytes_is_one_clear_error(corpus_text: str) -> None:
    with pytest.raises(UserError) as error:
        train_tokenizer("bpe", [corpus_text], TokenizerSettings(vocab_size=100))
    assert "100" in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------
# Subword regularisation


@pytest.mark.parametrize("kind, alpha", [("bpe", 0.2), ("unigram", 0.5)])
def test_sampled_segmentations_differ_but_decode_to_the_training_text(tmp_path: Path, corpus_text: str,
                                                                      kind: str, alpha: float) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    options = PrepareOptions(tokenizer=kind, vocab_size=SUBWORD_VOCAB, subword_alpha=alpha, subword_samples=3,
                             valid_fraction=0.1)
    prepared = prepare([str(corpus)], tmp_path / "p", options)
    tokenizer = prepared.tokenizer
    train_text = tokenizer.decode(split_ids(prepared, "train"))
    samples = [np.asarray(s).tolist() for s in prepared.train_samples]
    assert len(samples) == 3 == len(prepared.meta["train_samples"])
    assert [len(s) for s in samples] == prepared.meta["train_samples"]
    assert all(tokenizer.decode(s) == train_text for s in samples)
    assert len({tuple(s) for s in [split_ids(prepared, "train"), *samples]}) == 4  # all different
    # validation is encoded deterministically; each epoch reads the next sample
    assert split_ids(prepared, "valid") == tokenizer.encode(tokenizer.decode(split_ids(prepared, "valid"))).tolist()
    assert [np.asarray(prepared.train_tokens(epoch)).tolist() for epoch in (1, 2, 3, 4)] == [*samples, samples[0]]


def test_without_regularisation_every_epoch_reads_the_one_encoding(prepared_kinds) -> None:
    prepared = prepared_kinds["bpe"]
    assert prepared.train_samples == [] and prepared.meta["train_samples"] == []  # type: ignore[attr-defined]
    assert prepared.train_tokens(5) is prepared.splits["train"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("options, message", [
    (PrepareOptions(tokenizer="word", subword_alpha=0.1), "subword_alpha: needs `tokenizer` bpe or unigram"),
    (PrepareOptions(tokenizer="char", vocab_size=100), "vocab_size: does not apply to `tokenizer` char"),
    (PrepareOptions(tokenizer="bpe", min_count=3), "min_count: applies to `tokenizer` word only"),
    (PrepareOptions(tokenizer="word", vocab_size=2), "vocab_size: must be at least 3"),
    (PrepareOptions(tokenizer="sentencepiece"), "tokenizer: must be one of"),
])
def test_options_that_do_not_fit_the_tokenizer_are_refused(tmp_path: Path, options: PrepareOptions,
                                                           message: str) -> None:
    """The library names its arguments (the command line shows them as options, tested in test_cli_errors)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c\n", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(message)) as raised:
        prepare([str(corpus)], tmp_path / "p", options)
    assert "--" not in str(raised.value)
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------
# Models over word and subword tokens


def test_word_and_subword_models_are_measured_over_the_same_words(prepared_kinds, tmp_path: Path) -> None:
    """A word model's per-token and per-word perplexity agree; a bpe model's per-word perplexity
    divides by the same word count; training reads sampled segmentations epoch by epoch."""
    from rnnlm.checkpoint import load_model
    from rnnlm.model import ModelConfig
    from rnnlm.scoring import perplexity
    from rnnlm.training import TrainConfig, train

    test_text = "the cat sat on a mat.\n  it is not so big?\nunseen ✓ words\n"
    reports = {}
    for kind in ("word", "bpe"):
        prepared = prepared_kinds[kind]
        config = ModelConfig(vocab_size=prepared.tokenizer.vocab_size, cell="lstm", layers=1,  # type: ignore[attr-defined]
                             embedding_size=16, hidden_size=16, dropout=0.0, tie=False)
        result = train(prepared, tmp_path / kind, config,  # type: ignore[arg-type]
                       TrainConfig(epochs=1, batch_size=4, bptt=16, precision="fp32", device="cpu", random_seed=0))
        loaded = load_model(result.directory)
        reports[kind] = perplexity(loaded.model, loaded.tokenizer, [test_text]).to_dict()
    assert reports["word"]["tokens"] == reports["word"]["words"] == len(test_text.split()) + 3
    assert reports["word"]["ppl"] == pytest.approx(reports["word"]["word_ppl"])
    assert reports["bpe"]["words"] == reports["word"]["words"]
    assert reports["bpe"]["chars"] == reports["word"]["chars"]
    assert reports["bpe"]["tokens"] > reports["bpe"]["words"] and reports["bpe"]["oov"] == 0


def test_training_cycles_through_sampled_segmentations(tmp_path: Path, corpus_text: str) -> None:
    from rnnlm.model import ModelConfig
    from rnnlm.training import TrainConfig, train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(
        tokenizer="bpe", vocab_size=SUBWORD_VOCAB, subword_alpha=0.3, subword_samples=2))
    config = ModelConfig(vocab_size=prepared.tokenizer.vocab_size, cell="gru", layers=1, embedding_size=8,
                         hidden_size=8, dropout=0.0, tie=False)
    result = train(prepared, tmp_path / "model", config,
                   TrainConfig(epochs=3, batch_size=4, bptt=16, precision="fp32", device="cpu"))
    samples = prepared.meta["train_samples"]
    per_epoch = [((n - 1) // 4 + 15) // 16 for n in (samples[0], samples[1], samples[0])]
    assert result.steps == sum(per_epoch)


# ---------------------------------------------------------------------------------------
# Input handling and streaming


def test_a_directory_is_its_visible_files_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second file\n", encoding="utf-8")
    (folder / "a.md").write_text("first file", encoding="utf-8")  # no final newline
    (folder / ".hidden").write_text("never read\n", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("not entered\n", encoding="utf-8")
    prepared = prepare([str(folder)], tmp_path / "p", PrepareOptions(tokenizer="word", valid_fraction=0.0))
    assert prepared.tokenizer.decode(split_ids(prepared, "train")) == "first file\nsecond file\n"
    assert prepared.meta["sources"] == [str(folder / "a.md"), str(folder / "b.txt")]


def test_an_empty_directory_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="directory"):
        prepare([str(tmp_path / "empty")], tmp_path / "p", PrepareOptions())


def test_standard_input_through_the_command_line(tmp_path: Path) -> None:
    text = make_corpus(50, seed=9)
    result = run_cli("prepare", "-", "-o", tmp_path / "p", "--tokenizer", "word", "--valid-fraction", "0",
                     input=text.encode("utf-8"))
    assert result.returncode == 0, result
    prepared = load_prepared(tmp_path / "p")
    assert prepared.tokenizer.decode(split_ids(prepared, "train")) == normalise(text)
    assert prepared.meta["sources"] == ["<stdin>"]
    assert re.search(r"prepared [\d.,]+ MB of text in [\d.,]+ s \([\d.,]+ MB/s\)", result.stderr), result


@pytest.mark.parametrize("kind", list(TOKENIZER_KINDS))
def test_chunked_reading_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Words numbered across many chunks, and validation/test words never seen in training."""
    import rnnlm.fileio

    corpus = tmp_path / "corpus.txt"
    training, test_line = make_corpus(400, seed=6), "only in the test part: zebra ✓"
    corpus.write_text(training + (test_line + "\n") * 5, encoding="utf-8")
    options = PrepareOptions(tokenizer=kind, vocab_size=SUBWORD_VOCAB if kind in ("bpe", "unigram") else None,
                             valid_fraction=0.1, test_fraction=0.01)
    whole = prepare([str(corpus)], tmp_path / "whole", options)
    monkeypatch.setattr(rnnlm.fileio, "CHUNK_BYTES", 256)
    chunked = prepare([str(corpus)], tmp_path / "chunked", options)
    assert chunked.meta["splits"] == whole.meta["splits"]
    assert chunked.tokenizer.to_dict() == whole.tokenizer.to_dict()
    for split in ("train", "valid", "test"):
        assert split_ids(chunked, split) == split_ids(whole, split)
    unseen = {"char": [c for c in test_line if c not in training], "word": [w for w in test_line.split()
                                                                         if w not in training.split()]}
    assert whole.meta["splits"]["test"]["oov"] == 5 * len(unseen.get(kind, []))


@pytest.mark.parametrize("kind, alpha", [("bpe", 0.0), ("unigram", 0.3)])
def test_worker_processes_write_what_one_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        kind: str, alpha: float) -> None:
    import rnnlm.fileio
    import rnnlm.preparation

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(2000, seed=5), encoding="utf-8")
    options = PrepareOptions(tokenizer=kind, vocab_size=SUBWORD_VOCAB, subword_alpha=alpha, subword_samples=2,
                             valid_fraction=0.1, test_fraction=0.1)
    monkeypatch.setattr(rnnlm.fileio, "CHUNK_BYTES", 4096)  # many chunks
    one = prepare([str(corpus)], tmp_path / "one", options)
    monkeypatch.setattr(rnnlm.preparation, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(rnnlm.preparation, "worker_count", lambda: 2)
    many = prepare([str(corpus)], tmp_path / "many", options)
    assert many.meta["splits"] == one.meta["splits"]
    for name in ("train.bin", "valid.bin", "test.bin"):
        assert (tmp_path / "many" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    train_text = one.tokenizer.decode(split_ids(one, "train"))
    assert len(many.train_samples) == (2 if alpha else 0)  # random, so only their text can be compared
    assert all(many.tokenizer.decode(np.asarray(s).tolist()) == train_text for s in many.train_samples)


def test_progress_without_a_terminal_is_one_closing_line_with_the_throughput() -> None:
    from rich.console import Console

    from rnnlm.display import PrepareDisplay

    out = StringIO()
    display = PrepareDisplay(Console(file=out, force_terminal=False))
    display.start(3_000_000)
    display.phase("encoding", 3_000_000)
    display.advance(3_000_000)
    display.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"prepared 3\.0 MB of text in [\d.]+ s \([\d.,]+ MB/s\)", lines[0])


# ---------------------------------------------------------------------------------------
# The catalogue


def test_catalogue_entries_name_their_source_checksum_licence_and_split() -> None:
    entries = json.loads((REPO / "corpora" / "catalogue.json").read_text(encoding="utf-8"))
    assert {"alice", "tinyshakespeare", "ptb", "ptb-char"} <= set(entries)
    for name, entry in entries.items():
        assert entry["title"] and entry["licence"], name
        for filename, spec in entry["files"].items():
            assert spec["url"].startswith("https://"), filename
            assert re.fullmatch(r"[0-9a-f]{64}", spec["sha256"]), filename
            assert spec["mirror"].endswith(filename.split("/")[-1]), filename
        split = entry["split"]
        named = [split[k] for k in ("train", "valid", "test") if k in split] if split["kind"] == "files" else [split["file"]]
        assert set(named) <= set(entry["files"]), name
        assert entry.get("tokenizer", "char") in TOKENIZER_KINDS
    assert entries["ptb"]["tokenizer"] == "word"
    assert not list((REPO / "corpora").glob("*.txt"))  # the repository holds no corpus text


def test_a_catalogue_corpus_brings_its_usual_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rnnlm.corpora

    monkeypatch.setattr(rnnlm.corpora, "catalogue", lambda: {"ptb": {"tokenizer": "word"}, "alice": {}})
    monkeypatch.chdir(tmp_path)
    assert rnnlm.corpora.default_tokenizer(["ptb"]) == "word"
    assert rnnlm.corpora.default_tokenizer(["alice"]) == "char"
    assert rnnlm.corpora.default_tokenizer(["my.txt"]) == "char"
    (tmp_path / "ptb").write_text("a file named ptb\n", encoding="utf-8")
    assert rnnlm.corpora.default_tokenizer(["ptb"]) == "char"


@pytest.fixture
def fake_mirror(tmp_path: Path) -> Path:
    """A mirror folder whose PTB training file has the wrong bytes and whose other files are missing."""
    mirror = tmp_path / "mirror"
    (mirror / "ptb").mkdir(parents=True)
    (mirror / "ptb" / "ptb.train.txt").write_text(" not the penn treebank \n", encoding="utf-8")
    return mirror


def assert_one_error_line(result, *expected: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result
    assert len(result.stderr_lines) == 1 and result.stderr_lines[0].startswith("rnnlm: error: "), result
    for text in expected:
        assert text in result.stderr_lines[0], result
    assert result.stdout == ""


def test_a_wrong_checksum_is_refused(fake_mirror: Path, tmp_path: Path) -> None:
    result = run_cli("prepare", "ptb", "--mirror", fake_mirror, "-o", tmp_path / "out")
    assert_one_error_line(result, "ptb.train.txt", "checksum mismatch")
    assert not (tmp_path / "out").exists()
    assert not list(Path(os.environ["RNNLM_CACHE_DIR"]).rglob("ptb.train.txt"))  # not kept in the cache


def test_a_file_missing_from_the_mirror_is_named(tmp_path: Path) -> None:
    (tmp_path / "mirror").mkdir()
    result = run_cli("prepare", "alice", "--mirror", tmp_path / "mirror", "-o", tmp_path / "out")
    assert_one_error_line(result, "alice/alice.txt", "mirror")


def test_an_unknown_corpus_name_lists_the_catalogue(tmp_path: Path) -> None:
    result = run_cli("prepare", "wikitext", "-o", tmp_path / "out", cwd=tmp_path)
    assert_one_error_line(result, "wikitext", "no such file", "ptb")


@pytest.mark.parametrize("where", ["under-a-file", "read-only"])
def test_an_unwritable_output_directory_fails_before_reading_the_corpus(tmp_path: Path, where: str) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c\n", encoding="utf-8")
    if where == "under-a-file":
        output = corpus / "out"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        (tmp_path / "locked").mkdir(mode=0o555)
        output = tmp_path / "locked" / "out"
    result = run_cli("prepare", corpus, "-o", output)
    assert_one_error_line(result, str(output), "cannot write")


def test_train_takes_the_tokenizer_options(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(200, seed=4), encoding="utf-8")
    result = run_cli("train", corpus, "-o", tmp_path / "model", "--tokenizer", "unigram", "--vocab-size",
                     str(SUBWORD_VOCAB), "--subword-alpha", "0.3", "--subword-samples", "2", "--epochs", "2",
                     "--batch-size", "4", "--bptt", "16", "--hidden-size", "8", "--layers", "1", "--device", "cpu",
                     "--precision", "fp32")
    assert result.returncode == 0, result
    config = json.loads((tmp_path / "model" / "config.json").read_text(encoding="utf-8"))
    assert config["corpus"]["tokenizer"] == "unigram"
    prepared = load_prepared(Path(config["corpus"]["directory"]))
    assert len(prepared.train_samples) == 2 and prepared.meta["options"]["subword_alpha"] == 0.3
