"""The built-in text sets: every passage is shipped, recorded with its licence, and reachable as
``--prompt-set`` (one passage or the whole set), and ``--prompt-tokens`` cuts the prompt's ids."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bitnet_crossval.crossval import CrossvalRequest, parse_model, run_crossval
from bitnet_crossval.crossval.options import REQUEST_OPTIONS, build_request
from bitnet_crossval.crossval.run import prompt_ids
from bitnet_crossval.crossval.texts import TEXT_SETS, expand_prompt_set, joined_text, parse_prompt_set, prompt_text
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.options import OptionValues, RawValue
from tests.unit.crossval.fake_reference import FakeCache

TEXTS_DIR = Path(__file__).resolve().parents[3] / "bitnet_crossval" / "crossval" / "texts"


def request(**raw: RawValue) -> CrossvalRequest:
    return build_request(OptionValues(REQUEST_OPTIONS, raw))


def test_every_passage_is_shipped_and_recorded_in_the_licence_file() -> None:
    licence = (TEXTS_DIR / "LICENSE.md").read_text(encoding="utf-8")
    for text_set in TEXT_SETS.values():
        shipped = sorted(p.stem for p in (TEXTS_DIR / text_set.name).glob("*.txt"))
        assert shipped == sorted(text_set.names())
        for text in text_set.texts:
            assert f"| `{text_set.name}` | `{text.name}` |" in licence
            assert str(text.year) in licence
            body = text.read(text_set.name)
            assert len(body.split()) > 150 and body == body.strip()


def test_a_set_is_every_passage_joined_and_a_passage_is_itself() -> None:
    whole = prompt_text(parse_prompt_set("classics"))
    one = prompt_text(parse_prompt_set("classics/moby-dick"))
    assert one.startswith("Call me Ishmael.")
    assert one in whole and whole.startswith("Four score and seven years ago")
    assert whole.count("\n\n") >= len(TEXT_SETS["classics"].texts) - 1


def test_a_star_expands_into_one_name_per_passage() -> None:
    names = expand_prompt_set("classics/*")
    assert names == [f"classics/{n}" for n in TEXT_SETS["classics"].names()]
    assert expand_prompt_set("classics") == ["classics"]
    assert expand_prompt_set("classics/alice") == ["classics/alice"]


@pytest.mark.parametrize(
    ("value", "sentence"),
    [
        ("wikitext", "--prompt-set 'wikitext' names no built-in text set"),
        ("classics/hamlet", "--prompt-set 'classics/hamlet': the set classics has no text 'hamlet'"),
        ("classics/*", "'*' (one case per passage) is for a suite's cases file"),
    ],
)
def test_bad_names_are_one_sentence_naming_what_exists(value: str, sentence: str) -> None:
    with pytest.raises(BadInput) as caught:
        request(prompt_set=value)
    assert sentence in caught.value.message
    assert "classics" in caught.value.next_step


def test_the_prompt_set_becomes_the_prompt_and_is_recorded() -> None:
    r = request(prompt_set="classics/alice", prompt_tokens="64")
    assert r.prompt.startswith("Alice was beginning") and r.prompt_set == "classics/alice"
    assert r.prompt_tokens == 64
    assert request().prompt_tokens is None and request(prompt_tokens="0").prompt_tokens is None


@pytest.mark.parametrize(
    ("raw", "sentence"),
    [
        ({"prompt": "Hi", "prompt_set": "classics"}, "--prompt and --prompt-set both give the tokens"),
        ({"prompt_set": "classics", "tokens_file": "t.json"}, "--prompt-set and --tokens-file both give the tokens"),
        (
            {"prompt": "Hi", "prompt_set": "classics", "tokens_file": "t.json"},
            "--prompt, --prompt-set and --tokens-file all give the tokens",
        ),
        ({"prompt_tokens": "-1"}, "--prompt-tokens '-1' is not a whole number from 0 to 1048576"),
    ],
)
def test_conflicting_or_bad_values_are_bad_input(raw: dict[str, RawValue], sentence: str) -> None:
    with pytest.raises(BadInput, match="^" + sentence.replace("(", r"\(")):
        request(**raw)


@pytest.mark.usefixtures("one_blas_thread_here")
def test_prompt_tokens_keeps_the_first_n_ids_of_real_text(fake_cache: FakeCache) -> None:
    ctx = fake_cache.context()
    # The fake tokenizer spends a token on little more than a letter: the first sentence is plenty.
    text = prompt_text(parse_prompt_set("classics/gettysburg")).split(",")[0]
    whole = run_crossval(CrossvalRequest(model=parse_model("synthetic:llama"), prompt=text, max_tokens=0), ctx)
    cut = run_crossval(
        CrossvalRequest(
            model=parse_model("synthetic:llama"),
            prompt=text,
            prompt_set="classics/gettysburg",
            prompt_tokens=12,
            max_tokens=0,
        ),
        ctx,
    )
    assert len(whole.tokens) > 12
    assert cut.tokens == whole.tokens[:12] and cut.n_prompt == 12 and cut.passed
    assert cut.reference["tokenization"]["prompt_set"] == "classics/gettysburg"
    assert cut.reference["tokenization"]["prompt_tokens"] == 12


def test_joined_text_continues_with_the_set_in_order_and_over_again() -> None:
    choice = parse_prompt_set("classics/alice")
    alice = prompt_text(choice)
    whole = prompt_text(parse_prompt_set("classics"))
    joined = joined_text(choice, 3 * len(whole))
    assert len(joined) >= 3 * len(whole)
    assert joined.startswith(alice + "\n\n" + whole)  # the passage asked for, then the set from its first
    assert joined.count("Four score and seven years ago") >= 2
    assert joined_text(choice, 10) == alice  # long enough already


class LetterTokenizer:
    """A reference tokenizer stand-in: one id per character (BOS 1 first), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def tokenize(self, model: Path, text: str, *, add_bos: bool, parse_special: bool) -> Any:
        self.calls += 1
        return SimpleNamespace(tokens=([1] if add_bos else []) + [ord(c) % 250 + 3 for c in text])


@pytest.mark.parametrize("wanted", [100, 5_000, 40_000])
def test_prompt_tokens_past_a_passage_joins_the_sets_texts(wanted: int) -> None:
    passage = prompt_text(parse_prompt_set("classics/gettysburg"))
    tokenizer = LetterTokenizer()
    r = CrossvalRequest(prompt=passage, prompt_set="classics/gettysburg", prompt_tokens=wanted, max_tokens=0)
    ids, text = prompt_ids(r, tokenizer, Path("m.gguf"), add_bos=True, n_vocab=256)  # type: ignore[arg-type]
    assert len(ids) == wanted
    assert ids == tokenizer.tokenize(Path("m.gguf"), text, add_bos=True, parse_special=False).tokens[:wanted]
    assert text.startswith(passage)
    if wanted > len(passage):
        assert text[len(passage) :].startswith("\n\nFour score and seven years ago")  # then the set, in order
    assert tokenizer.calls <= 4


def test_prompt_tokens_cut_a_prompt_without_a_set_and_never_lengthen_it() -> None:
    r = CrossvalRequest(prompt="Four score", prompt_tokens=50, max_tokens=0)
    ids, text = prompt_ids(r, LetterTokenizer(), Path("m.gguf"), add_bos=True, n_vocab=256)  # type: ignore[arg-type]
    assert len(ids) == 11 and text == "Four score"


def test_a_prompt_file_is_the_prompt_and_excludes_the_other_sources(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Call me Ishmael. Some years ago", encoding="utf-8")
    r = request(prompt_file=str(path))
    assert r.prompt == "Call me Ishmael. Some years ago" and r.prompt_file == path
    with pytest.raises(BadInput, match=r"^--prompt and --prompt-file both give the tokens"):
        request(prompt="Hi", prompt_file=str(path))


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (None, "the prompt file {path} does not exist"),
        (b"caf\xe9 au lait", "the prompt file {path} is not UTF-8 text: the byte at offset 3 does not decode"),
        (b"  \n\t", "the prompt file {path} holds no text"),
        ("dir", "the prompt file {path} is not a regular file"),
    ],
)
def test_a_bad_prompt_file_is_one_sentence(tmp_path: Path, content: bytes | str | None, sentence: str) -> None:
    path = tmp_path / "prompt.txt"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(BadInput) as caught:
        request(prompt_file=str(path))
    assert caught.value.message == sentence.format(path=path)
    assert "--prompt-file" in caught.value.next_step or "--tokens-file" in caught.value.next_step


@pytest.mark.usefixtures("one_blas_thread_here")
def test_a_prompt_file_gives_the_tokens_of_the_same_prompt(fake_cache: FakeCache, tmp_path: Path) -> None:
    ctx = fake_cache.context()
    path = tmp_path / "prompt.txt"
    path.write_text("Four score and seven years ago", encoding="utf-8")
    from_file = run_crossval(request(model="synthetic:llama", prompt_file=str(path), max_tokens="2"), ctx)
    given = run_crossval(request(model="synthetic:llama", prompt="Four score and seven years ago", max_tokens="2"), ctx)
    assert from_file.tokens == given.tokens and from_file.passed
    assert from_file.reference["tokenization"]["prompt_file"] == str(path)
