"""The built-in text sets: every passage is shipped, recorded with its licence, and reachable as
``--prompt-set`` (one passage or the whole set), and ``--prompt-tokens`` cuts the prompt's ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_crossval.crossval import CrossvalRequest, parse_model, run_crossval
from bitnet_crossval.crossval.options import REQUEST_OPTIONS, build_request
from bitnet_crossval.crossval.texts import TEXT_SETS, expand_prompt_set, parse_prompt_set, prompt_text
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
