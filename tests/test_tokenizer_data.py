"""The character tokenizer, `prepare` (splits, counts, token-id files) and TBPTT batching."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnnlm.batching import stream_batches, variable_window_length
from rnnlm.preparation import PrepareOptions, prepare
from rnnlm.prepared_corpus import load_prepared
from rnnlm.errors import UserError
from rnnlm.fileio import iter_text_chunks
from rnnlm.tokenizers import UNK_TEXT, CharTokenizer, load_tokenizer, save_tokenizer

# A training alphabet with ASCII, Latin-1, a combining accent, CJK, Greek, an astral-plane
# emoji, a tab and a carriage return.
ALPHABET = "abc xyz.,!ABCéßñ\u0301日本語Ωμ🙂\t\r"
TRAINING_TEXT = ALPHABET + "\n" + "the quick brown fox\n"


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train([TRAINING_TEXT])


# ---------------------------------------------------------------------------------------
# Tokenizer


@given(st.text(alphabet=st.sampled_from(sorted(set(TRAINING_TEXT))), max_size=200))
def test_char_round_trip_of_seen_text(tokenizer: CharTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids.tolist()) == text
    assert len(ids) == len(text)  # one token per code point, newlines included
    assert not np.any(ids == tokenizer.unk_id)
    newline_positions = [i for i, c in enumerate(text) if c == "\n"]
    assert np.flatnonzero(ids == tokenizer.eol_id).tolist() == newline_positions


@given(st.text(max_size=200))
def test_unseen_characters_map_to_unk(tokenizer: CharTokenizer, text: str) -> None:
    seen = set(TRAINING_TEXT)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    unseen = [c not in seen for c in text]
    assert (ids == tokenizer.unk_id).tolist() == unseen
    assert tokenizer.decode(ids.tolist()) == "".join(c if c in seen else UNK_TEXT for c in text)


def test_tokenizer_ids_and_vocabulary(tokenizer: CharTokenizer) -> None:
    chars = sorted(set(TRAINING_TEXT) - {"\n"})
    assert tokenizer.vocab_size == len(chars) + 2  # end-of-line and unknown
    assert tokenizer.eol_id == 0 and tokenizer.unk_id == 1
    assert tokenizer.encode("\n").tolist() == [tokenizer.eol_id]
    # ids are distinct and cover 2..vocab_size-1 exactly once
    assert sorted(tokenizer.encode("".join(chars)).tolist()) == list(range(2, tokenizer.vocab_size))
    assert tokenizer.piece(tokenizer.eol_id) != tokenizer.piece(tokenizer.unk_id)


def test_tokenizer_saves_as_json_and_loads_identically(tokenizer: CharTokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tokenizer, path)
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, never a pickle
    assert data["kind"] == "char"
    loaded = load_tokenizer(path)
    assert loaded.vocab_size == tokenizer.vocab_size
    sample = TRAINING_TEXT + "unseen ✓\n"
    assert loaded.encode(sample).tolist() == tokenizer.encode(sample).tolist()


def test_loading_a_bad_tokenizer_file_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError):
        load_tokenizer(path)
    with pytest.raises(UserError):
        load_tokenizer(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------
# prepare: files, counts, splits


def hand_counts(text: str, alphabet: set[str]) -> dict[str, int]:
    """Counts by the definitions of docs/design.md, for text whose every line ends with a newline."""
    lines = text.split("\n")[:-1]
    return {
        "tokens": sum(len(line) + 1 for line in lines),  # char tokenizer: one per character + end-of-line
        "words": sum(len(line.split()) + 1 for line in lines),
        "chars": sum(len(line) + 1 for line in lines),
        "lines": len(lines),
        "oov": sum(1 for line in lines for c in line if c not in alphabet),
    }




def split_tokens(prepared, split: str) -> list[int]:
    return np.asarray(prepared.splits[split]).tolist()


def test_prepare_with_valid_and_test_files_writes_exact_counts_and_ids(tmp_path) -> None:
    train_text = "the cat sat\n\nnaïve café 日本\n  spaced   out  \n🙂 tab\there\n"
    valid_text = "the dog ✓ sat\nZ\n"  # 'g', '✓' and 'Z' never occur in the training text
    test_text = "café ☃\n"
    for name, text in (("train", train_text), ("valid", valid_text), ("test", test_text)):
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "prepared"
    prepared = prepare([str(tmp_path / "train.txt")], out,
                       PrepareOptions(valid=str(tmp_path / "valid.txt"), test=str(tmp_path / "test.txt")))

    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    alphabet = set(train_text) - {"\n"}
    for split, text in (("train", train_text), ("valid", valid_text), ("test", test_text)):
        expected = hand_counts(text, alphabet)
        assert meta["splits"][split] == expected, split
        # the .bin file holds exactly `tokens` ids of the recorded dtype ...
        size = (out / f"{split}.bin").stat().st_size
        assert size == expected["tokens"] * np.dtype(meta["dtype"]).itemsize
        # ... and they are the tokenizer's encoding of the split's text
        assert split_tokens(prepared, split) == prepared.tokenizer.encode(text).tolist()
        assert prepared.tokenizer.decode(split_tokens(prepared, split)) == "".join(
            c if c in alphabet or c == "\n" else UNK_TEXT for c in text)
    assert meta["splits"]["valid"]["oov"] == 3
    assert meta["splits"]["test"]["oov"] == 1
    assert meta["splits"]["train"]["oov"] == 0
    assert meta["vocab_size"] == len(alphabet) + 2 == prepared.tokenizer.vocab_size
    assert meta["dtype"] == "uint16"
    assert (out / "tokenizer.json").exists()
    # the tokenizer is built from the training split only
    assert prepared.tokenizer.encode("g").tolist() == [prepared.tokenizer.unk_id]


def test_prepare_fractions_split_contiguous_line_ranges_at_the_end(tmp_path) -> None:
    lines = [f"line number {i}" for i in range(20)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.1, test_fraction=0.2))
    decode = prepared.tokenizer.decode
    assert decode(split_tokens(prepared, "train")) == "".join(line + "\n" for line in lines[:14])
    assert decode(split_tokens(prepared, "valid")) == "".join(line + "\n" for line in lines[14:16])
    assert decode(split_tokens(prepared, "test")) == "".join(line + "\n" for line in lines[16:])
    assert [prepared.meta["splits"][s]["lines"] for s in ("train", "valid", "test")] == [14, 2, 4]


def test_prepare_without_held_out_text_has_empty_valid_and_test(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\ncd\n", encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.0))
    assert len(prepared.splits["train"]) == 6
    assert prepared.meta["splits"]["valid"]["tokens"] == 0 == len(prepared.splits["valid"])
    assert prepared.meta["splits"]["test"]["tokens"] == 0 == len(prepared.splits["test"])


def test_fraction_of_lines_is_not_inflated_by_float_rounding(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"l{i}\n" for i in range(100)), encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.07))
    assert prepared.meta["splits"]["valid"]["lines"] == 7


def test_file_without_trailing_newline_gets_a_final_end_of_line(tmp_path) -> None:
    unterminated, terminated = tmp_path / "a.txt", tmp_path / "b.txt"
    unterminated.write_text("ab\ncd", encoding="utf-8")
    terminated.write_text("ab\ncd\n", encoding="utf-8")
    one = prepare([str(unterminated)], tmp_path / "p1", PrepareOptions(valid_fraction=0.0))
    two = prepare([str(terminated)], tmp_path / "p2", PrepareOptions(valid_fraction=0.0))
    assert split_tokens(one, "train") == split_tokens(two, "train")
    assert one.meta["splits"]["train"] == {"tokens": 6, "words": 4, "chars": 6, "lines": 2, "oov": 0}


def test_unterminated_last_line_is_counted_when_splitting_by_fraction(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("l1\nl2\nl3\nl2", encoding="utf-8")  # four lines, the last unterminated
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.25))
    assert prepared.tokenizer.decode(split_tokens(prepared, "train")) == "l1\nl2\nl3\n"
    assert prepared.tokenizer.decode(split_tokens(prepared, "valid")) == "l2\n"


@pytest.mark.parametrize("held_out", [
    "fraction",
    "file",
])
def test_several_sources_do_not_run_lines_together(tmp_path, held_out: str) -> None:
    first, second, valid = tmp_path / "1.txt", tmp_path / "2.txt", tmp_path / "valid.txt"
    first.write_text("ab", encoding="utf-8")  # no trailing newline
    second.write_text("cd\n", encoding="utf-8")
    valid.write_text("ba\n", encoding="utf-8")
    options = PrepareOptions(valid_fraction=0.0) if held_out == "fraction" else PrepareOptions(valid=str(valid))
    prepared = prepare([str(first), str(second)], tmp_path / "p", options)
    assert prepared.tokenizer.decode(split_tokens(prepared, "train")) == "ab\ncd\n"
    assert prepared.meta["splits"]["train"]["lines"] == 2


def test_single_unterminated_line_is_a_corpus(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world", encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.0))
    assert prepared.tokenizer.decode(split_tokens(prepared, "train")) == "hello world\n"


def test_prepare_reads_in_chunks_without_changing_the_result(tmp_path, monkeypatch) -> None:
    import rnnlm.fileio

    text = "".join(f"line {i} ünïcode 🙂\n" for i in range(300))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    whole = prepare([str(corpus)], tmp_path / "whole", PrepareOptions(valid_fraction=0.1, test_fraction=0.1))
    monkeypatch.setattr(rnnlm.fileio, "CHUNK_BYTES", 64)
    chunked = prepare([str(corpus)], tmp_path / "chunked", PrepareOptions(valid_fraction=0.1, test_fraction=0.1))
    assert chunked.meta["splits"] == whole.meta["splits"]
    for split in ("train", "valid", "test"):
        assert split_tokens(chunked, split) == split_tokens(whole, split)


def test_prepare_refuses_to_replace_a_foreign_directory(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab\ncd\n", encoding="utf-8")
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not delete", encoding="utf-8")
    with pytest.raises(UserError):
        prepare([str(corpus)], target, PrepareOptions(valid_fraction=0.0))
    assert (target / "thesis.tex").read_text(encoding="utf-8") == "do not delete"
    # but an earlier prepare output is replaced whole
    prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.0))
    (tmp_path / "corpus.txt").write_text("xyz\n", encoding="utf-8")
    again = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.0))
    assert again.tokenizer.decode(split_tokens(again, "train")) == "xyz\n"


def test_load_prepared_detects_a_truncated_token_file(tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc\ndef\n", encoding="utf-8")
    prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.0))
    data = (tmp_path / "p" / "train.bin").read_bytes()
    (tmp_path / "p" / "train.bin").write_bytes(data[:-2])
    with pytest.raises(UserError, match="truncated"):
        load_prepared(tmp_path / "p")


# ---------------------------------------------------------------------------------------
# Reading text


def test_text_chunks_end_on_line_boundaries_and_rebuild_the_text() -> None:
    text = "".join(f"{i} é 日本 🙂\n" for i in range(50)) + "last line without newline"
    chunks = list(iter_text_chunks(io.BytesIO(text.encode("utf-8")), "x", chunk_bytes=16))
    assert "".join(chunks) == text
    assert len(chunks) > 5
    assert all(chunk.endswith("\n") for chunk in chunks[:-1])


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_invalid_utf8_names_byte_offset_and_line(chunk_bytes: int) -> None:
    good = "ok line\nnaïve line\nthird\n".encode("utf-8")
    data = good + b"four \xff five\nsix\n"
    offset = len(good) + 5
    with pytest.raises(UserError) as error:
        list(iter_text_chunks(io.BytesIO(data), "bad.txt", chunk_bytes=chunk_bytes))
    message = str(error.value)
    assert f"byte {offset}" in message and "line 4" in message and "bad.txt" in message
    replaced = "".join(iter_text_chunks(io.BytesIO(data), "bad.txt", errors="replace", chunk_bytes=chunk_bytes))
    assert replaced.splitlines()[3] == "four \ufffd five"


# ---------------------------------------------------------------------------------------
# Stateful TBPTT batches


@given(
    n=st.integers(min_value=2, max_value=2000),
    batch_size=st.integers(min_value=1, max_value=9),
    bptt=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=-5, max_value=5),
)
def test_variable_windows_read_every_row_once_in_order_and_resume_alike(n: int, batch_size: int, bptt: int,
                                                                        seed: int) -> None:
    tokens = np.arange(n, dtype=np.uint16)
    row_length = (n - 1) // batch_size
    if row_length < 1:
        return
    length = variable_window_length(bptt, seed, epoch=1)
    batches = list(stream_batches(tokens, batch_size, bptt, window_length=length))
    for column, inputs, targets in batches:
        assert inputs.shape[1] == min(length(column), row_length - column)
        assert min(5, bptt) <= length(column) <= bptt + 40
        assert np.array_equal(targets, inputs + 1)
    rows = np.concatenate([inputs for _, inputs, _ in batches], axis=1)
    for r in range(batch_size):
        assert rows[r].tolist() == list(range(r * row_length, (r + 1) * row_length))
    start = batches[len(batches) // 2][0]
    resumed = list(stream_batches(tokens, batch_size, bptt, start, variable_window_length(bptt, seed, epoch=1)))
    assert [(c, x.tolist()) for c, x, _ in resumed] == [(c, x.tolist()) for c, x, _ in batches if c >= start]


def test_variable_window_lengths_are_awd_lstms() -> None:
    """About bptt, about half of it one time in twenty, a standard deviation of 5 tokens; a function
    of the seed, the epoch and the column alone."""
    lengths = np.array([variable_window_length(70, 0, 1)(column) for column in range(4000)])
    short = lengths < 52  # more than 3.5 standard deviations from 70, less than that from 35
    assert 0.03 < short.mean() < 0.07
    assert abs(lengths[~short].mean() - 70) < 0.5 and 4 < lengths[~short].std() < 6
    assert abs(lengths[short].mean() - 35) < 2
    assert lengths.tolist() == [variable_window_length(70, 0, 1)(column) for column in range(4000)]
    assert lengths.tolist() != [variable_window_length(70, 0, 2)(column) for column in range(4000)]
    assert lengths.tolist() != [variable_window_length(70, 1, 1)(column) for column in range(4000)]


@given(
    n=st.integers(min_value=2, max_value=400),
    batch_size=st.integers(min_value=1, max_value=9),
    bptt=st.integers(min_value=1, max_value=40),
)
def test_stream_batches_rows_continue_across_batches(n: int, batch_size: int, bptt: int) -> None:
    tokens = np.arange(n, dtype=np.uint16)  # each token's value is its stream position
    row_length = (n - 1) // batch_size
    if row_length < 1:
        with pytest.raises(UserError):
            list(stream_batches(tokens, batch_size, bptt))
        return
    batches = list(stream_batches(tokens, batch_size, bptt))
    assert [column for column, _, _ in batches] == list(range(0, row_length, bptt))
    for column, inputs, targets in batches:
        assert inputs.dtype == np.int64 and targets.dtype == np.int64
        assert inputs.shape == targets.shape == (batch_size, min(bptt, row_length - column))
        assert np.array_equal(targets, inputs + 1)  # targets are the inputs shifted by one
    for (_, previous, previous_targets), (_, following, _) in zip(batches, batches[1:]):
        # row r of batch k+1 picks up exactly where row r of batch k stopped
        assert np.array_equal(following[:, 0], previous[:, -1] + 1)
        assert np.array_equal(following[:, 0], previous_targets[:, -1])
    rows = np.concatenate([inputs for _, inputs, _ in batches], axis=1)
    for r in range(batch_size):
        assert rows[r].tolist() == list(range(r * row_length, (r + 1) * row_length))
    # resuming from a column yields the same batches from there on
    start = batches[len(batches) // 2][0]
    resumed = list(stream_batches(tokens, batch_size, bptt, start_column=start))
    assert [c for c, _, _ in resumed] == [c for c, _, _ in batches if c >= start]
    for (_, a, b), (_, c, d) in zip(resumed, [x for x in batches if x[0] >= start]):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_stream_batches_over_a_prepared_memmap(tmp_path) -> None:
    text = "".join(f"row {i}\n" for i in range(40))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    prepared = prepare([str(corpus)], tmp_path / "p", PrepareOptions(valid_fraction=0.0))
    train = prepared.splits["train"]
    assert isinstance(train, np.memmap)
    ids = np.asarray(train, dtype=np.int64)
    batch_size, bptt = 4, 7
    row_length = (len(ids) - 1) // batch_size
    batches = list(stream_batches(train, batch_size, bptt))
    inputs = np.concatenate([x for _, x, _ in batches], axis=1)
    targets = np.concatenate([y for _, _, y in batches], axis=1)
    for r in range(batch_size):
        assert np.array_equal(inputs[r], ids[r * row_length:(r + 1) * row_length])
        assert np.array_equal(targets[r], ids[r * row_length + 1:(r + 1) * row_length + 1])
