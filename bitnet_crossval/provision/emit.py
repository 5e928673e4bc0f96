"""Lines a shell can evaluate to point itself at an installed backend (``--emit``).

Every value is quoted for the target shell so paths with spaces, ``$``, backticks, quotes
or non-ASCII characters arrive unchanged; a value a shell cannot carry is refused rather
than mangled. A path-list variable gets the new directory in front of its current value,
with no separator left dangling when it was empty (an empty entry in ``LD_LIBRARY_PATH``
means "the current directory" to the dynamic loader).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from bitnet_crossval.errors import BadInput
from bitnet_crossval.provision.options import SHELLS, Shell

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# PowerShell closes a single-quoted string on any of these, not only on ASCII ' (about_Quoting_Rules).
_PWSH_QUOTES = "'\u2018\u2019\u201a\u201b"
# cmd cannot escape a double quote inside `set "..."`, ends a command at a line break, and
# expands %NAME% in a batch file with no escape that also works at the prompt.
_CMD_FORBIDDEN = {'"': "a double quote", "\n": "a line break", "\r": "a line break", "%": "a percent sign"}


def quote_sh(value: str) -> str:
    """POSIX single quotes: nothing inside is special; a quote is closed, escaped, reopened."""
    return "'" + value.replace("'", "'\\''") + "'"


def quote_fish(value: str) -> str:
    """fish single quotes: only backslash and the quote itself are escapes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_pwsh(value: str) -> str:
    """PowerShell verbatim strings: a quote character is written twice."""
    return "'" + "".join(c + c if c in _PWSH_QUOTES else c for c in value) + "'"


def _check_cmd_value(name: str, value: str) -> None:
    for char, description in _CMD_FORBIDDEN.items():
        if char in value:
            raise BadInput(
                f"cmd cannot set {name} to {value!r}: the value contains {description}",
                next_step="use --emit pwsh, or install into a directory whose path has no such character",
            )


def _sh_lines(set_vars: Mapping[str, str], prepend_paths: Mapping[str, str]) -> list[str]:
    lines = [f"export {name}={quote_sh(value)}" for name, value in set_vars.items()]
    # ${NAME:+:$NAME} adds ":<old value>" only when the old value is set and non-empty.
    lines += [
        f'export {name}={quote_sh(directory)}"${{{name}:+:${name}}}"' for name, directory in prepend_paths.items()
    ]
    return lines


def _fish_lines(set_vars: Mapping[str, str], prepend_paths: Mapping[str, str]) -> list[str]:
    lines = [f"set -gx {name} {quote_fish(value)}" for name, value in set_vars.items()]
    # A fish variable whose name ends in PATH is a list joined with ":" on export; test -n
    # keeps an empty old value from becoming an empty element (a trailing ":"). `set` keeps the
    # status of the failed test, so `true` makes `... | source; and next-command` work.
    for name, directory in prepend_paths.items():
        quoted = quote_fish(directory)
        lines.append(f'if test -n "${name}"; set -gx {name} {quoted} ${name}; else; set -gx {name} {quoted}; end; true')
    return lines


def _pwsh_lines(set_vars: Mapping[str, str], prepend_paths: Mapping[str, str]) -> list[str]:
    lines = [f"$env:{name} = {quote_pwsh(value)}" for name, value in set_vars.items()]
    # [IO.Path]::PathSeparator is ";" on Windows and ":" elsewhere, so one line serves both.
    lines += [
        f"$env:{name} = {quote_pwsh(d)} + $(if ($env:{name}) "
        f"{{ [string][IO.Path]::PathSeparator + $env:{name} }} else {{ '' }})"
        for name, d in prepend_paths.items()
    ]
    return lines


def _cmd_lines(set_vars: Mapping[str, str], prepend_paths: Mapping[str, str]) -> list[str]:
    for name, value in [*set_vars.items(), *prepend_paths.items()]:
        _check_cmd_value(name, value)
    lines = [f'set "{name}={value}"' for name, value in set_vars.items()]
    # cmd has no empty variables (`set "X="` deletes X), so "defined" means "non-empty".
    lines += [
        f'if defined {name} (set "{name}={d};%{name}%") else (set "{name}={d}")' for name, d in prepend_paths.items()
    ]
    return lines


_RENDERERS: dict[Shell, Callable[[Mapping[str, str], Mapping[str, str]], list[str]]] = {
    "sh": _sh_lines,
    "fish": _fish_lines,
    "pwsh": _pwsh_lines,
    "cmd": _cmd_lines,
}


def emit_lines(shell: Shell, *, set_vars: Mapping[str, str], prepend_paths: Mapping[str, str]) -> list[str]:
    """Lines that, evaluated by ``shell``, assign ``set_vars`` and put each directory of
    ``prepend_paths`` in front of its path-list variable (keeping the variable's old value)."""
    renderer = _RENDERERS.get(shell)
    if renderer is None:
        raise BadInput(f"unknown shell {shell!r} for --emit", next_step=f"use one of: {', '.join(SHELLS)}")
    for name, value in [*set_vars.items(), *prepend_paths.items()]:
        if not _NAME.match(name):
            raise BadInput(
                f"{name!r} is not a valid environment variable name",
                next_step="use letters, digits and underscores, not starting with a digit",
            )
        if "\0" in value:
            raise BadInput(
                f"the value for {name} contains a NUL character, which no environment can hold",
                next_step="use a path without NUL characters",
            )
    return renderer(set_vars, prepend_paths)
