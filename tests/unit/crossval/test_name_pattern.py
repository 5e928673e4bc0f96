"""--trace-names takes the regular expressions Python and the shim's ECMAScript std::regex read
alike; everything else is refused when the command starts, naming what and where."""

from __future__ import annotations

import re

import pytest

from bitnet_crossval.crossval.name_pattern import EXAMPLE, check_name_pattern
from bitnet_crossval.crossval.trace import parse_names
from bitnet_crossval.errors import BadInput

ACCEPTED = [
    "attn_.*",
    EXAMPLE,
    "Qcur-0",
    r"l_out-\d+",
    r"\w+_out-[0-2]",
    "result_output|embd",
    "[^_]+-1",
    r"a{2,3}?b",
    "x{2}",
    "x{2,}",
    "(?:Qcur|Kcur)-[0-2]",
    r"[a\-z]",
    "[-a]",
    "[a-]",
    r"x\.y",
    r"\(x\)",
    "^embd$",
    "(?!ffn).*",
    "(?=Q).*",
    r"\bQ",
    "a|",
    "()",
    ".*?",
    r"[\d_]",
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_the_shared_subset_is_accepted(pattern: str) -> None:
    check_name_pattern(pattern)
    assert parse_names(pattern) == pattern
    re.compile(pattern)


REFUSED = [
    ("(?P<x>Qcur)", "the group '(?P' at offset 0"),
    ("(?i)qcur", "the group '(?i' at offset 0"),
    ("(?<=attn_)norm", "the group '(?<=' at offset 0"),
    ("(?<!a)b", "the group '(?<!' at offset 0"),
    ("(?#note)x", "the group '(?#' at offset 0"),
    ("a*+", "a second quantifier '+' at offset 2"),
    ("a{", "the repetition '{' at offset 1"),
    ("a{x}", "the repetition '{x}' at offset 1"),
    ("[[:alpha:]]", "'[' inside a class at offset 1"),
    ("[]a]", "']' first in a class"),
    ("é", "the character 'é' (only printable ASCII is read alike) at offset 0"),
    ("a\tb", "the character '\\t'"),
    (r"\A", r"the escape '\\A' at offset 0"),
    (r"\1", r"the escape '\\1' at offset 0"),
    (r"\x41", r"the escape '\\x' at offset 0"),
    (r"\p{L}", r"the escape '\\p' at offset 0"),
    ("a}", "a bare '}' at offset 1"),
    ("a]", "a bare ']' at offset 1"),
    ("(?=a)*", "a quantifier '*' after '(?=a)' at offset 5"),
    ("^*", "a quantifier '*' after '^' at offset 1"),
    (r"[\d-z]", r"the range '\\d-z' at offset 1"),
    ("[z-a]", "the range 'z-a' at offset 1"),
    ("a{5,2}", "the repetition '{5,2}' at offset 1"),
    ("a{1001}", "the repetition '{1001}' at offset 1"),
    (r"[\b]", r"the escape '\\b' at offset 1"),
]


@pytest.mark.parametrize(("pattern", "what"), REFUSED, ids=[p for p, _ in REFUSED])
def test_anything_else_is_refused_naming_what_and_where(pattern: str, what: str) -> None:
    with pytest.raises(BadInput) as caught:
        check_name_pattern(pattern)
    message = caught.value.message
    assert message.startswith(f"--trace-names {pattern!r} uses "), message
    assert what in message, message
    assert message.endswith("which the reference's C++ regular expressions (ECMAScript) do not read as Python does")
    assert f"--trace-names '{EXAMPLE}'" in caught.value.next_step
    assert "\n" not in caught.value.message


@pytest.mark.parametrize("pattern", ["a)", "(a", "[a", "*a", "a**"])
def test_what_python_refuses_itself_is_still_bad_input(pattern: str) -> None:
    with pytest.raises(BadInput, match="--trace-names"):
        parse_names(pattern)
