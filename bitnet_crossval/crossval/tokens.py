"""The token ids both sides evaluate: from the reference's tokenizer, or given directly.

The reference tokenizer is llama.cpp's (through the shim), with BOS and special-token parsing
explicit; the text is ``--prompt``, or read from ``--prompt-file``. ``--tokens-file`` gives ids
directly (a ``.npy`` integer array, a JSON list, or ids separated by whitespace or commas).
``--tokenizer tokenizer.json`` tokenizes the prompt a second time with the ``tokenizers``
library, so a tokenizer that disagrees with the reference is reported first, as its own
verdict, before any logits are compared.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.files import read_regular_file

MAX_TOKENS_FILE_BYTES = 64 << 20
MAX_PROMPT_FILE_BYTES = 16 << 20


@dataclass(frozen=True, kw_only=True)
class TokenMismatch:
    """Where the candidate's tokenizer first departs from the reference's."""

    first_index: int
    reference: tuple[int, ...]
    candidate: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"first_index": self.first_index, "reference": list(self.reference), "candidate": list(self.candidate)}


def read_tokens_file(path: Path) -> list[int]:
    """Token ids from ``--tokens-file``; anything that is not a flat list of integers is bad input.

    Errors quote a length and a position, never the file's content: the file may be anything
    (``/etc/shadow``). Its size is checked before it is read, and the read is bounded.
    """
    next_step = "write the ids as a .npy integer array, a JSON list, or numbers separated by spaces"
    too_large = f"the tokens file {path} is larger than {MAX_TOKENS_FILE_BYTES >> 20} MB"
    try:
        size = os.stat(path).st_size
        if size > MAX_TOKENS_FILE_BYTES:  # before reading: a sparse file of gigabytes costs nothing to stat
            raise BadInput(f"{too_large} ({size} bytes)", next_step=next_step)
        raw = read_regular_file(path, limit=MAX_TOKENS_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(f"the tokens file {path} does not exist", next_step=next_step) from None
    except OSError as exc:
        raise BadInput(f"the tokens file {path} cannot be read: {exc.strerror or exc}", next_step=next_step) from exc
    if raw is None:
        raise BadInput(f"the tokens file {path} is not a regular file", next_step=next_step)
    if len(raw) > MAX_TOKENS_FILE_BYTES:  # it grew since, or reports no size (a /proc file)
        raise BadInput(f"{too_large} (more than {MAX_TOKENS_FILE_BYTES} bytes)", next_step=next_step)
    ids = _parse_tokens(raw, path)
    if not ids:
        raise BadInput(f"the tokens file {path} holds no token ids", next_step=next_step)
    return ids


def read_prompt_file(path: Path) -> str:
    """The text of ``--prompt-file``: a regular file of UTF-8 text, at most
    :data:`MAX_PROMPT_FILE_BYTES`; anything else is bad input quoting a size or an offset, never
    the content."""
    next_step = f"pass a UTF-8 text file of at most {MAX_PROMPT_FILE_BYTES >> 20} MB with --prompt-file"
    too_large = f"the prompt file {path} is larger than {MAX_PROMPT_FILE_BYTES >> 20} MB"
    try:
        size = os.stat(path).st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise BadInput(f"{too_large} ({size} bytes)", next_step=next_step)
        raw = read_regular_file(path, limit=MAX_PROMPT_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(f"the prompt file {path} does not exist", next_step=next_step) from None
    except OSError as exc:
        raise BadInput(f"the prompt file {path} cannot be read: {exc.strerror or exc}", next_step=next_step) from exc
    if raw is None:
        raise BadInput(f"the prompt file {path} is not a regular file", next_step=next_step)
    if len(raw) > MAX_PROMPT_FILE_BYTES:
        raise BadInput(f"{too_large} (more than {MAX_PROMPT_FILE_BYTES} bytes)", next_step=next_step)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"the prompt file {path} is not UTF-8 text: the byte at offset {exc.start} does not decode",
            next_step="save the prompt as UTF-8, or pass its token ids with --tokens-file",
        ) from None
    if not text.strip():
        raise BadInput(f"the prompt file {path} holds no text", next_step=next_step)
    return text


def _parse_tokens(raw: bytes, path: Path) -> list[int]:
    next_step = "write the ids as a .npy integer array, a JSON list, or numbers separated by spaces"
    if raw.startswith(b"\x93NUMPY"):
        import io

        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            # numpy's message may quote the header, so it is not repeated here.
            raise BadInput(
                f"the tokens file {path} is not a readable .npy file ({len(raw)} bytes that numpy cannot parse)",
                next_step=next_step,
            ) from exc
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise BadInput(
                f"the tokens file {path} holds a {array.dtype} array of shape {list(array.shape)}, "
                "expected a 1-D integer array",
                next_step=next_step,
            )
        return [int(t) for t in array]
    text = raw.decode("utf-8", errors="replace")
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            document = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise BadInput(
                f"the tokens file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})",
                next_step=next_step,
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise BadInput(f"the tokens file {path} is not valid JSON", next_step=next_step) from exc
        if not isinstance(document, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in document):
            raise BadInput(f"the tokens file {path} is not a JSON list of integers", next_step=next_step)
        return [int(t) for t in document]
    ids: list[int] = []
    for word in re.finditer(r"[^\s,]+", text):
        if not re.fullmatch(r"-?[0-9]{1,12}", word.group()):
            line = text.count("\n", 0, word.start()) + 1
            column = word.start() - (text.rfind("\n", 0, word.start()) + 1) + 1
            length = len(word.group())
            raise BadInput(
                f"the tokens file {path} holds a word of {length} character{'s' if length != 1 else ''} at "
                f"line {line}, column {column} that is not a token id",
                next_step=next_step,
            )
        ids.append(int(word.group()))
    return ids


def check_token_ids(tokens: Sequence[int], *, n_vocab: int, where: str) -> None:
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise BadInput(
            f"{where} holds token id {bad[0]}, outside the model's vocabulary of {n_vocab} ids"
            + (f" ({len(bad) - 1} more)" if len(bad) > 1 else ""),
            next_step=f"use ids from 0 to {n_vocab - 1}",
        )


def tokenizer_json_tokens(path: Path, text: str, *, add_special_tokens: bool) -> list[int]:
    """``text`` tokenized by a Hugging Face ``tokenizer.json`` with the ``tokenizers`` library."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BadInput(
            "--tokenizer needs the tokenizers package",
            next_step="pip install tokenizers (or pip install 'bitnet-crossval-suite[tokenizers]')",
        ) from None
    if not path.is_file():
        raise BadInput(f"the tokenizer {path} does not exist", next_step="pass --tokenizer a tokenizer.json file")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises its own Exception types for a bad file
        # The library's message may quote the file's strings (serde's "invalid type: string ..."):
        # only its shape and position are kept.
        reason = re.sub(r'"(?:[^"\\]|\\.)*"', '"…"', " ".join(str(exc).split()))[:200]
        raise BadInput(
            f"the tokenizer {path} cannot be loaded ({reason})",
            next_step="pass the tokenizer.json that belongs to the model",
        ) from exc
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


def first_difference(reference: Sequence[int], candidate: Sequence[int]) -> TokenMismatch | None:
    for index, (a, b) in enumerate(zip(reference, candidate, strict=False)):
        if a != b:
            return TokenMismatch(first_index=index, reference=tuple(reference), candidate=tuple(candidate))
    if len(reference) != len(candidate):
        return TokenMismatch(
            first_index=min(len(reference), len(candidate)), reference=tuple(reference), candidate=tuple(candidate)
        )
    return None
