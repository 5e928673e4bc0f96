"""Token ids given directly (--tokens-file), their range check, and a second tokenizer
(--tokenizer tokenizer.json, built here with the tokenizers library) compared with the reference's."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.crossval.tokens import (
    MAX_TOKENS_FILE_BYTES,
    TokenMismatch,
    check_token_ids,
    first_difference,
    read_tokens_file,
    tokenizer_json_tokens,
)
from bitnet_crossval.errors import BadInput


def tokens_file(tmp_path: Path, content: str | bytes, name: str = "ids") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


# --- read_tokens_file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    ["1 2 3", "1,2,3", "1, 2, 3\n", "1\n2\n3\n", "\t1  2\r\n3 ", "[1, 2, 3]", " [1,2,3] \n", "1,,2 , 3"],
)
def test_text_and_json_lists(tmp_path: Path, content: str) -> None:
    assert read_tokens_file(tokens_file(tmp_path, content)) == [1, 2, 3]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.int8, np.uint32])
def test_npy_integer_arrays(tmp_path: Path, dtype: type) -> None:
    path = tmp_path / "ids.npy"
    np.save(path, np.array([1, 2, 3], dtype=dtype))
    assert read_tokens_file(path) == [1, 2, 3]
    assert all(type(t) is int for t in read_tokens_file(path))


def test_negative_and_large_ids_are_read_for_the_range_check_to_refuse(tmp_path: Path) -> None:
    assert read_tokens_file(tokens_file(tmp_path, "-5 999999999999")) == [-5, 999999999999]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "holds no token ids"),
        ("  \n\t ", "holds no token ids"),
        ("[]", "holds no token ids"),
        ("1 2 x", "holds a word of 1 character at line 1, column 5 that is not a token id"),
        ("1 2.0", "holds a word of 3 characters at line 1, column 3 that is not a token id"),
        ("1\n 1234567890123", "holds a word of 13 characters at line 2, column 2 that is not a token id"),
        ('{"ids": [1]}', "holds a word of 7 characters at line 1, column 1 that is not a token id"),
        ("[1, 2", "is not valid JSON (line 1, column 6)"),
        ("[1, true]", "is not a JSON list of integers"),
        ("[1, 2.5]", "is not a JSON list of integers"),
        ("[[1, 2]]", "is not a JSON list of integers"),
        ('["1"]', "is not a JSON list of integers"),
        ("[" * 100_000, "is not valid JSON"),
    ],
)
def test_anything_else_is_bad_input(tmp_path: Path, content: str, fragment: str) -> None:
    path = tokens_file(tmp_path, content)
    with pytest.raises(BadInput) as info:
        read_tokens_file(path)
    assert fragment in info.value.message and str(path) in info.value.message
    assert "\n" not in info.value.message


def test_a_long_bad_word_is_cut_short_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        read_tokens_file(tokens_file(tmp_path, "x" * 10_000))
    assert len(info.value.message) < 300


@pytest.mark.parametrize(
    "content",
    [
        "root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n",
        "1 2 3\nsecret-word 4\n",
        '[1, 2, "secret-word"]',
        '{"secret-word": 1}',
    ],
    ids=["shadow-line", "second-line", "json-string", "json-object"],
)
def test_the_message_never_quotes_the_file(tmp_path: Path, content: str) -> None:
    """A tokens file may be anything the user can read (--tokens-file /etc/shadow): the error gives
    a length and a position, never the content."""
    with pytest.raises(BadInput) as info:
        read_tokens_file(tokens_file(tmp_path, content))
    for secret in ("root", "hash", "salt", "secret"):
        assert secret not in info.value.message.replace(str(tmp_path), "")
    assert secret not in info.value.next_step


def test_a_broken_npy_header_is_not_quoted(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, b"\x93NUMPY\x01\x00\x20\x00{'descr': 'secret-header-text'}   \n", "ids.npy")
    with pytest.raises(BadInput, match=r"is not a readable \.npy file") as info:
        read_tokens_file(path)
    assert "secret" not in info.value.message.replace(str(tmp_path), "")


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.array([1.0, 2.0]), "holds a float64 array of shape [2], expected a 1-D integer array"),
        (np.array([[1, 2], [3, 4]]), "of shape [2, 2]"),
        (np.array([True, False]), "holds a bool array"),
        (np.array([], dtype=np.int32), "holds no token ids"),
        (np.array(["1", "2"]), "expected a 1-D integer array"),
    ],
)
def test_npy_arrays_that_are_not_ids(tmp_path: Path, array: np.ndarray, fragment: str) -> None:
    path = tmp_path / "ids.npy"
    np.save(path, array)
    with pytest.raises(BadInput, match="the tokens file") as info:
        read_tokens_file(path)
    assert fragment in info.value.message


def test_a_pickled_or_broken_npy_is_bad_input(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match=r"is not a readable \.npy file"):
        read_tokens_file(pickled)
    broken = tokens_file(tmp_path, b"\x93NUMPY\x01\x00garbage", "broken.npy")
    with pytest.raises(BadInput, match=r"is not a readable \.npy file"):
        read_tokens_file(broken)


def test_missing_directory_and_fifo_are_bad_input_without_blocking(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        read_tokens_file(tmp_path / "nope")
    with pytest.raises(BadInput, match="is not a regular file"):
        read_tokens_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_tokens_file(fifo)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], BadInput) and "is not a regular file" in outcome[0].message


def test_an_unreadable_file_is_bad_input(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tokens_file(tmp_path, "1 2")
    path.chmod(0)
    with pytest.raises(BadInput, match="cannot be read"):
        read_tokens_file(path)


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.write(b"1 ")
        f.truncate(MAX_TOKENS_FILE_BYTES + 1)
    with pytest.raises(BadInput, match=rf"is larger than 64 MB \({MAX_TOKENS_FILE_BYTES + 1} bytes\)"):
        read_tokens_file(path)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size is checked first: a 3 GB sparse file is never read (reading it whole took 6 GB)."""
    from bitnet_crossval.crossval import tokens

    path = tmp_path / "sparse.txt"
    with path.open("wb") as f:
        f.truncate(3 << 30)
    limits: list[int | None] = []

    def bounded(path: Path, *, limit: int | None = None) -> bytes | None:
        limits.append(limit)
        return b""

    monkeypatch.setattr(tokens, "read_regular_file", bounded)
    with pytest.raises(BadInput, match=rf"is larger than 64 MB \({3 << 30} bytes\)"):
        read_tokens_file(path)
    assert limits == []


# --- check_token_ids, first_difference ------------------------------------------------------------


def test_ids_in_range_pass() -> None:
    check_token_ids([0, 5, 9], n_vocab=10, where="the tokens file x")


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ([0, 10], "the tokens file x holds token id 10, outside the model's vocabulary of 10 ids"),
        ([-1, 3], "holds token id -1, outside"),
        ([3, 12, -4, 99], "holds token id 12, outside the model's vocabulary of 10 ids (2 more)"),
    ],
)
def test_ids_out_of_range_are_bad_input(tokens: list[int], message: str) -> None:
    with pytest.raises(BadInput) as info:
        check_token_ids(tokens, n_vocab=10, where="the tokens file x")
    assert message in info.value.message
    assert info.value.next_step == "use ids from 0 to 9"


@pytest.mark.parametrize(
    ("reference", "candidate", "index"),
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 9, 3], 1),
        ([1, 2, 3], [2, 2, 3], 0),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2], [1, 2, 3, 4], 2),
        ([], [], None),
        ([], [1], 0),
    ],
)
def test_first_difference(reference: list[int], candidate: list[int], index: int | None) -> None:
    mismatch = first_difference(reference, candidate)
    if index is None:
        assert mismatch is None
        return
    assert mismatch == TokenMismatch(first_index=index, reference=tuple(reference), candidate=tuple(candidate))
    assert json.loads(json.dumps(mismatch.to_json())) == {
        "first_index": index,
        "reference": reference,
        "candidate": candidate,
    }


# --- tokenizer.json -------------------------------------------------------------------------------


@pytest.fixture
def tokenizer_json(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁Hello": 10, "▁world": 11, "▁again": 12}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_a_tokenizer_json_tokenizes_with_and_without_special_tokens(tokenizer_json: Path) -> None:
    assert tokenizer_json_tokens(tokenizer_json, "Hello world again", add_special_tokens=True) == [1, 10, 11, 12]
    assert tokenizer_json_tokens(tokenizer_json, "Hello world", add_special_tokens=False) == [10, 11]
    assert tokenizer_json_tokens(tokenizer_json, "Hello stranger", add_special_tokens=False) == [10, 0]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), ("{ not json", "cannot be loaded"), ('{"version": "1.0"}', "cannot be loaded")],
)
def test_a_bad_tokenizer_file_is_bad_input(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInput, match=fragment) as info:
        tokenizer_json_tokens(path, "Hello", add_special_tokens=True)
    assert "\n" not in info.value.message and len(info.value.message) < 400


def test_a_directory_is_no_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="the tokenizer"):
        tokenizer_json_tokens(tmp_path, "Hello", add_special_tokens=True)
