from __future__ import annotations

import shlex

import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.provision.emit import emit_lines, quote_fish, quote_pwsh, quote_sh
from bitnet_crossval.provision.options import SHELLS

NASTY = [
    "/plain/path",
    "/with space/lib",
    "$HOME/$(rm -rf ~)/${X}",
    "`whoami`",
    "it's",
    "''",
    'say "hi"',
    "back\\slash\\",
    "new\nline",
    "\u00fcn\u00efc\u00f6d\u00e9 \u2713 \u65e5\u672c",
    "semi;colon & pipe | <redirect> ^caret (paren) !bang",
    "\u2018smart\u2019 \u201aquotes\u201b",
    "",
    "-starts-with-dash",
    "*glob?[x]",
    "tab\there",
]


def decode_fish_single_quoted(text: str) -> str:
    """fish's rules for '...': \\\\ is a backslash, \\' a quote, any other backslash is literal."""
    assert text[0] == text[-1] == "'"
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in "\\'":
            out.append(body[i + 1])
            i += 2
            continue
        assert body[i] != "'", "an unescaped quote would end the string early"
        out.append(body[i])
        i += 1
    return "".join(out)


def decode_pwsh_single_quoted(text: str) -> str:
    """PowerShell's rules for '...': any of the five quote characters, doubled, is one literal."""
    quotes = "'\u2018\u2019\u201a\u201b"
    assert text[0] == text[-1] == "'"
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        if body[i] in quotes:
            assert i + 1 < len(body) and body[i + 1] == body[i], "a lone quote would end the string early"
            out.append(body[i])
            i += 2
            continue
        out.append(body[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("value", NASTY)
def test_sh_quoting_round_trips_through_posix_rules(value: str) -> None:
    [line] = emit_lines("sh", set_vars={"LLAMA_CPP_DIR": value}, prepend_paths={})
    assert shlex.split(line) == ["export", f"LLAMA_CPP_DIR={value}"]
    assert quote_sh(value).startswith("'")


@pytest.mark.parametrize("value", NASTY)
def test_fish_quoting_round_trips(value: str) -> None:
    [line] = emit_lines("fish", set_vars={"LLAMA_CPP_DIR": value}, prepend_paths={})
    prefix = "set -gx LLAMA_CPP_DIR "
    assert line.startswith(prefix)
    assert decode_fish_single_quoted(line[len(prefix) :]) == value


@pytest.mark.parametrize("value", NASTY)
def test_pwsh_quoting_round_trips(value: str) -> None:
    [line] = emit_lines("pwsh", set_vars={"LLAMA_CPP_DIR": value}, prepend_paths={})
    prefix = "$env:LLAMA_CPP_DIR = "
    assert line.startswith(prefix)
    assert decode_pwsh_single_quoted(line[len(prefix) :]) == value


@pytest.mark.parametrize(
    ("quote", "value", "expected"),
    [
        (quote_sh, "it's", "'it'\\''s'"),
        (quote_sh, "$X `y`", "'$X `y`'"),
        (quote_fish, "it's", "'it\\'s'"),
        (quote_fish, "a\\b", "'a\\\\b'"),
        (quote_fish, "$X", "'$X'"),
        (quote_pwsh, "it's", "'it''s'"),
        (quote_pwsh, "\u2019", "'\u2019\u2019'"),
        (quote_pwsh, "$env:X `n", "'$env:X `n'"),
    ],
)
def test_quoting_examples(quote, value: str, expected: str) -> None:
    assert quote(value) == expected


def test_sh_prepend_line_keeps_old_value_without_trailing_separator() -> None:
    lines = emit_lines(
        "sh",
        set_vars={"LLAMA_CPP_DIR": "/c/llama"},
        prepend_paths={"LD_LIBRARY_PATH": "/c/llama/lib"},
    )
    assert lines == [
        "export LLAMA_CPP_DIR='/c/llama'",
        "export LD_LIBRARY_PATH='/c/llama/lib'\"${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\"",
    ]


def test_fish_prepend_line() -> None:
    [line] = emit_lines("fish", set_vars={}, prepend_paths={"LD_LIBRARY_PATH": "/c/it's"})
    assert line == (
        "if test -n \"$LD_LIBRARY_PATH\"; set -gx LD_LIBRARY_PATH '/c/it\\'s' $LD_LIBRARY_PATH; "
        "else; set -gx LD_LIBRARY_PATH '/c/it\\'s'; end; true"
    )


def test_pwsh_prepend_line_uses_the_platform_separator() -> None:
    [line] = emit_lines("pwsh", set_vars={}, prepend_paths={"PATH": "C:\\c\\llama\\bin"})
    assert line == (
        "$env:PATH = 'C:\\c\\llama\\bin' + $(if ($env:PATH) "
        "{ [string][IO.Path]::PathSeparator + $env:PATH } else { '' })"
    )


def test_cmd_lines() -> None:
    lines = emit_lines(
        "cmd",
        set_vars={"LLAMA_CPP_DIR": "C:\\Program Files (x86)\\llama & co"},
        prepend_paths={"PATH": "C:\\c\\bin"},
    )
    assert lines == [
        'set "LLAMA_CPP_DIR=C:\\Program Files (x86)\\llama & co"',
        'if defined PATH (set "PATH=C:\\c\\bin;%PATH%") else (set "PATH=C:\\c\\bin")',
    ]


@pytest.mark.parametrize("value", ['say "hi"', "new\nline", "cr\rhere", "100%", "%PATH%"])
def test_cmd_rejects_values_it_cannot_carry(value: str) -> None:
    with pytest.raises(BadInput) as info:
        emit_lines("cmd", set_vars={"LLAMA_CPP_DIR": value}, prepend_paths={})
    assert info.value.exit_code == 6
    assert "LLAMA_CPP_DIR" in info.value.message
    with pytest.raises(BadInput):
        emit_lines("cmd", set_vars={}, prepend_paths={"PATH": value})


@pytest.mark.parametrize("shell", SHELLS)
def test_order_is_set_vars_then_prepends(shell) -> None:
    lines = emit_lines(shell, set_vars={"A_DIR": "/a", "B_DIR": "/b"}, prepend_paths={"LD_LIBRARY_PATH": "/l"})
    assert len(lines) == 3
    assert "A_DIR" in lines[0] and "B_DIR" in lines[1] and "LD_LIBRARY_PATH" in lines[2]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "", "A;rm"])
def test_invalid_variable_names_are_refused(shell, name: str) -> None:
    with pytest.raises(BadInput):
        emit_lines(shell, set_vars={name: "/x"}, prepend_paths={})


@pytest.mark.parametrize("shell", SHELLS)
def test_nul_is_refused_everywhere(shell) -> None:
    with pytest.raises(BadInput):
        emit_lines(shell, set_vars={"X": "a\0b"}, prepend_paths={})


def test_unknown_shell_is_bad_input() -> None:
    with pytest.raises(BadInput):
        emit_lines("zsh", set_vars={}, prepend_paths={})  # type: ignore[arg-type]
