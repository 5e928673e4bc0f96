"""A suite's cases file: the product of the matrix, its exclusions, explicit cases, defaults, ids,
and one BadInput sentence (exit 6) naming the file for everything it gets wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitnet_crossval.crossval.texts import TEXT_SETS
from bitnet_crossval.errors import BadInput
from bitnet_crossval.suite.cases import CasesFile, case_options, read_cases_file


def cases_file(tmp_path: Path, text: str, name: str = "cases.toml") -> CasesFile:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_cases_file(path)


def refused(tmp_path: Path, text: str) -> BadInput:
    path = tmp_path / "cases.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BadInput) as caught:
        read_cases_file(path)
    assert caught.value.message.startswith(f"the cases file {path} ")
    assert "\n" not in caught.value.message
    return caught.value


def test_the_matrix_is_a_product_in_file_order_then_the_explicit_cases(tmp_path: Path) -> None:
    f = cases_file(
        tmp_path,
        """
        [suite]
        name = "parity"
        [defaults]
        max-tokens = 4
        [matrix]
        model = ["synthetic:llama", "synthetic:gemma3", "synthetic:bitnet"]
        prompt = ["one", "two"]
        candidate = ["numpy", "llama"]
        [[matrix.exclude]]
        model = "synthetic:bitnet"
        candidate = "llama"
        [[case]]
        name = "real text"
        prompt-set = "classics/alice"
        prompt-tokens = 32
        max-tokens = 0
        """,
    )
    assert f.name == "parity"
    assert len(f.cases) == 3 * 2 * 2 - 2 + 1
    assert [c.index for c in f.cases] == list(range(len(f.cases)))
    assert f.cases[0].id == "synthetic:llama / one / numpy"
    assert f.cases[1].id == "synthetic:llama / one / llama"
    assert f.cases[2].id == "synthetic:llama / two / numpy"
    assert not any("bitnet" in c.id and c.id.endswith("/ llama") for c in f.cases)
    assert f.cases[0].to_json() == {
        "model": "synthetic:llama",
        "prompt": "one",
        "max-tokens": "4",
        "candidate": "numpy",
    }
    last = f.cases[-1]
    assert last.id == "real text"
    assert last.to_json() == {"prompt-set": "classics/alice", "prompt-tokens": "32", "max-tokens": "0"}


def test_options_follow_the_commands_table_order_and_a_case_overrides_the_defaults(tmp_path: Path) -> None:
    f = cases_file(
        tmp_path,
        """
        [defaults]
        candidate = "numpy"
        kl-max = 0.05
        trace = true
        [[case]]
        kl-max = 0.5
        model = "synthetic:gemma3:Q8_0"
        """,
    )
    (case,) = f.cases
    order = [key for key, _ in case.options]
    table = [option.flag[2:] for option in case_options()]
    assert order == sorted(order, key=table.index)
    assert case.value("kl-max") == "0.5" and case.value("trace") is True and case.value("candidate") == "numpy"


def test_the_token_source_is_one_slot(tmp_path: Path) -> None:
    f = cases_file(
        tmp_path,
        """
        [defaults]
        prompt = "a default prompt"
        [[case]]
        candidate = "numpy"
        [[case]]
        prompt-set = "classics/gettysburg"
        """,
    )
    assert f.cases[0].value("prompt") == "a default prompt"
    assert f.cases[1].value("prompt") is None and f.cases[1].value("prompt-set") == "classics/gettysburg"


def test_a_star_prompt_set_is_one_case_per_passage(tmp_path: Path) -> None:
    f = cases_file(
        tmp_path,
        """
        [matrix]
        prompt-set = ["classics/*"]
        candidate = ["numpy", "llama"]
        [[case]]
        name = "text"
        prompt-set = "classics/*"
        """,
    )
    passages = TEXT_SETS["classics"].names()
    assert len(f.cases) == 2 * len(passages) + len(passages)
    assert f.cases[0].id == "classics/gettysburg / numpy"
    assert [c.id for c in f.cases[-len(passages) :]] == [f"text / classics/{p}" for p in passages]


def test_ids_are_unique_short_and_stable(tmp_path: Path) -> None:
    long = "The quick brown fox jumps over the lazy dog and keeps running"
    text = f"""
        [matrix]
        prompt = ["{long}", "{long}!"]
        [[case]]
        candidate = "numpy"
        [[case]]
        candidate = "numpy"
        """
    f = cases_file(tmp_path, text)
    ids = [c.id for c in f.cases]
    assert len(set(ids)) == len(ids) == 4
    assert ids[0].endswith("…") and len(ids[0]) == 32
    assert ids[1] == ids[0] + " #2"
    assert ids[2:] == ["numpy", "numpy #2"]
    assert cases_file(tmp_path, text).digest == f.digest


def test_relative_paths_are_the_cases_files_and_named_models_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    model = tmp_path / "sub" / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 60)
    (tmp_path / "sub" / "ids.json").write_text("[1, 2, 3]")
    monkeypatch.chdir("/")
    f = cases_file(
        tmp_path / "sub",
        """
        [matrix]
        model = ["m.gguf", "synthetic:llama", "gemma3-270m"]
        tokens-file = ["ids.json"]
        """,
    )
    assert [c.value("model") for c in f.cases] == [str(model), "synthetic:llama", "gemma3-270m"]
    assert f.cases[0].value("tokens-file") == str(tmp_path / "sub" / "ids.json")
    assert f.cases[0].id == "m.gguf" and f.directory == tmp_path / "sub"


def test_the_reference_mode_is_a_dimension(tmp_path: Path) -> None:
    f = cases_file(tmp_path, '[matrix]\nreference = ["auto", "native"]\n')
    assert [c.value("reference") for c in f.cases] == ["auto", "native"]
    assert f.cases[0].id == "reference=auto"


NO_OPTION = "which is no option of crossval-per-token"
A_CASE = "[[case]]\nmodel = 'synthetic:llama'\n"
MISTAKES = [
    ("[matrix\n", "is not valid TOML: "),
    ("[defaults]\nmax_tokens = 4\n", f"'max_tokens' in [defaults], {NO_OPTION} (did you mean 'max-tokens'?)"),
    ("[matrix]\nmodle = ['synthetic:llama']\n", f"'modle' in [matrix], {NO_OPTION} (did you mean 'model'?)"),
    ("[[case]]\nname = 'x'\nfrob = 1\n", f"has the key 'frob' in [[case]] number 1, {NO_OPTION}"),
    ("[cases]\nmodel = 'x'\n", "has a table [cases], which is not one of [suite], [defaults], [matrix] and [[case]]"),
    ("[cases]\nmodel = 'x'\n", "(did you mean 'case'?)"),
    ("[suite]\nname = 'x'\ntitle = 'y'\n", "has the key 'title' in [suite], which takes only 'name'"),
    ("[suite]\nname = 3\n" + A_CASE, "has [suite] name = 3, which is not a name"),
    ("", "has no cases: give [matrix] lists or [[case]] tables"),
    ("[matrix]\nmodel = []\n", "has model = [] in [matrix]: an empty list makes no case"),
    ("[matrix]\nmax-tokens = ['x']\n", "has a bad case 'max-tokens=x': --max-tokens 'x' is not a whole number"),
    ("[defaults]\ntrace = 'yes'\n" + A_CASE, 'has trace = "yes" in [defaults], where true or false belongs'),
    ("[defaults]\nprompt = true\n" + A_CASE, "has prompt = true in [defaults], where a string or a number belongs"),
    ("[defaults]\nmodel = { a = 1 }\n[[case]]\ncandidate = 'numpy'\n", "where a string or a number belongs"),
    ("[[case]]\nmodel = 'synthetic:gpt2'\n", "has a bad case 'synthetic:gpt2': --model 'synthetic:gpt2' is not"),
    ("[[case]]\nmodel = 'missing.gguf'\n", "has a bad case 'missing.gguf': the model"),
    ("[[case]]\ncandidate = 'torch'\n", "has a bad case 'torch': --candidate 'torch' is not a candidate"),
    ("[[case]]\nprompt = 'a'\nprompt-set = 'classics'\n", "--prompt and --prompt-set both give the tokens"),
    ("[matrix]\nprompt-set = ['wikitext']\n", "has a bad prompt-set in [matrix]: prompt-set 'wikitext' names no"),
    ("[defaults]\nprompt-set = 'classics/*'\n" + A_CASE, "SET/* (one case per passage) belongs in [matrix]"),
    ("[matrix]\nmodel = ['x.gguf']\n[[matrix.exclude]]\ncandidate = 'llama'\n", "which is not a list of [matrix]"),
    ("[matrix]\nmodel = ['synthetic:llama']\n[[matrix.exclude]]\n", "has an empty [[matrix.exclude]] table"),
    ("[[case]]\nname = 'only a name'\n", "has an empty [[case]] number 1: a case sets at least one option"),
    ("case = 3\n", "has case = 3, where [[case]] tables belong"),
    ("[[case]]\nreference = 'float'\n", "--reference 'float' is not one of auto, native, dequantized"),
]


@pytest.mark.parametrize(("text", "fragment"), MISTAKES)
def test_every_mistake_is_one_sentence_naming_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    error = refused(tmp_path, text)
    assert fragment in error.message, error.message
    assert error.exit_code == 6 and error.next_step


def test_a_missing_file_a_directory_and_a_fifo_are_refused(tmp_path: Path) -> None:
    for path, fragment in (
        (tmp_path / "nope.toml", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(BadInput, match=fragment):
            read_cases_file(path)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="is not a regular file"):
        read_cases_file(fifo)  # never blocks waiting for a writer
