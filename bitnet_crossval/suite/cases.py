"""A suite's cases file, read and expanded into the list of cases it describes.

The file is TOML, in the shape of a CI build matrix (GitHub Actions' ``strategy.matrix`` with its
``exclude``, plus explicit cases as its ``include`` adds them)::

    [suite]
    name = "engine-parity"            # the JUnit suite's name (default: the file's name)

    [defaults]                        # options every case starts from
    max-tokens = 8

    [matrix]                          # one case per combination of these lists
    model = ["synthetic:llama", "synthetic:gemma3"]
    prompt = ["The capital of France is", "Once upon a time"]
    candidate = ["numpy", "llama"]

    [[matrix.exclude]]                # combinations left out
    model = "synthetic:gemma3"
    candidate = "llama"

    [[case]]                          # explicit cases, after the product
    name = "gemma on real text"
    model = "gemma3-270m"
    prompt-set = "classics/moby-dick"
    prompt-tokens = 256

Every key of ``[defaults]``, ``[matrix]`` and ``[[case]]`` is an option of ``crossval-per-token``
spelled as its flag without the dashes (``max-tokens``, ``kl-max``, ``candidate``, ...), taken
from that command's option table, so a new option of the command is a key here with nothing
added; a value is checked by the same parser as on the command line. A case's options are the
defaults, then its own values. The token source is one slot: a case that sets ``prompt``,
``prompt-file``, ``prompt-set`` or ``tokens-file`` drops the defaults' others. ``prompt-set = "SET/*"`` (in
``[matrix]`` or a ``[[case]]``) stands for one value per passage of the built-in set. Paths
(``model`` when a file, ``prompt-file``, ``tokens-file``, ``tokenizer``) are relative to the cases file's
directory, which is also where each case runs (a ``cmd:`` line and a ``py:`` module resolve
there). Anything the file gets wrong is one :class:`~bitnet_crossval.errors.BadInput` sentence
naming the file and the place.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from bitnet_crossval.crossval.models import GEMMA_NAME, SYNTHETIC_PREFIX
from bitnet_crossval.crossval.options import (
    MODEL,
    PROMPT,
    PROMPT_FILE,
    PROMPT_SET,
    REQUEST_OPTIONS,
    TOKENS_FILE,
    build_request,
)
from bitnet_crossval.crossval.texts import expand_prompt_set
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.files import read_regular_file
from bitnet_crossval.util.options import Flag, Option, OptionValues, PathOption, RawValue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.10 reads TOML with the tomli backport)
    import tomli as tomllib

MAX_CASES_FILE_BYTES = 4 << 20
MAX_CASES = 100_000
LABEL_CHARS = 32

SUITE, DEFAULTS, MATRIX, EXCLUDE, CASE, NAME = "suite", "defaults", "matrix", "exclude", "case", "name"
TOP_LEVEL = (SUITE, DEFAULTS, MATRIX, CASE)

RawCaseValue = str | bool


def case_options() -> tuple[Option[Any], ...]:
    """The options a case may set: ``crossval-per-token``'s request options (``reference`` among them)."""
    return REQUEST_OPTIONS


def key_of(option: Option[Any]) -> str:
    """The option's key in a cases file: its flag without the dashes (``max-tokens``)."""
    return option.flag[2:]


TOKEN_SOURCES = frozenset(key_of(option) for option in (PROMPT, PROMPT_FILE, PROMPT_SET, TOKENS_FILE))


@dataclass(frozen=True, kw_only=True)
class Case:
    index: int
    """0-based, in the order the file expands to (the product first, then the explicit cases)."""
    id: str
    """Unique in the file: the ``name`` of an explicit case, else the values that tell it apart."""
    options: tuple[tuple[str, RawCaseValue], ...]
    """(key, value) in the order of the command's option table; paths already absolute."""

    def value(self, key: str) -> RawCaseValue | None:
        return dict(self.options).get(key)

    def to_json(self) -> dict[str, RawCaseValue]:
        return dict(self.options)


@dataclass(frozen=True, kw_only=True)
class CasesFile:
    path: Path
    name: str
    cases: tuple[Case, ...]

    @property
    def directory(self) -> Path:
        """Where relative paths point and where each case runs."""
        return self.path.parent

    @property
    def digest(self) -> str:
        """The sha256 of the expanded cases (ids and options): shards of one suite share it."""
        data = json.dumps([[case.id, case.to_json()] for case in self.cases], sort_keys=True)
        return hashlib.sha256(data.encode("utf-8")).hexdigest()


def read_cases_file(path: Path) -> CasesFile:
    """The cases ``path`` describes, every value checked; :class:`BadInput` for anything wrong."""
    path = path.expanduser().absolute()
    document = _load(path)
    reader = _Reader(path)
    unknown = [key for key in document if key not in TOP_LEVEL]
    if unknown:
        reader.fail(
            f"has {_describe_key(unknown[0], document[unknown[0]])}, which is not one of "
            f"[{SUITE}], [{DEFAULTS}], [{MATRIX}] and [[{CASE}]]",
            suggestion=_close(unknown[0], TOP_LEVEL),
        )
    name = reader.suite_name(document.get(SUITE, {}))
    defaults = reader.values(reader.table(document, DEFAULTS), where=f"[{DEFAULTS}]")
    default_set = defaults.get(key_of(PROMPT_SET))
    if isinstance(default_set, str) and default_set.strip().endswith("/*"):
        reader.fail(
            f"has prompt-set = {default_set!r} in [{DEFAULTS}]: SET/* (one case per passage) belongs in "
            f"[{MATRIX}] or a [[{CASE}]]"
        )
    raw_cases = reader.matrix_cases(reader.table(document, MATRIX)) + reader.explicit_cases(document.get(CASE, []))
    if not raw_cases:
        reader.fail(f"has no cases: give [{MATRIX}] lists or [[{CASE}]] tables")
    if len(raw_cases) > MAX_CASES:
        reader.fail(f"expands to {len(raw_cases)} cases, more than the {MAX_CASES} a suite runs")
    cases = []
    seen: dict[str, int] = {}
    for index, (label, values) in enumerate(raw_cases):
        case_id = _unique(label, seen)
        options = reader.case_values(defaults, values, case_id=case_id)
        cases.append(Case(index=index, id=case_id, options=options))
    return CasesFile(path=path, name=name, cases=tuple(cases))


def _load(path: Path) -> dict[str, Any]:
    next_step = "pass a TOML cases file (docs/howto/suites.md)"
    try:
        data = read_regular_file(path, limit=MAX_CASES_FILE_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(f"the cases file {path} does not exist", next_step=next_step) from None
    except IsADirectoryError:
        raise BadInput(f"the cases file {path} is a directory", next_step=next_step) from None
    except OSError as exc:
        raise BadInput(f"the cases file {path} cannot be read: {exc.strerror or exc}", next_step=next_step) from None
    if data is None:
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise BadInput(f"the cases file {path} is {kind}", next_step=next_step)
    if len(data) > MAX_CASES_FILE_BYTES:
        raise BadInput(f"the cases file {path} is larger than {MAX_CASES_FILE_BYTES >> 20} MB", next_step=next_step)
    try:
        document: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"the cases file {path} is not UTF-8 text", next_step=next_step) from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"the cases file {path} is not valid TOML: {exc}", next_step=next_step) from None
    return document


class _Reader:
    """Reads the parts of one cases file; every refusal names the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.options = {key_of(option): option for option in case_options()}

    def fail(self, what: str, *, suggestion: str | None = None, next_step: str | None = None) -> NoReturn:
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        raise BadInput(
            f"the cases file {self.path} {what}{hint}",
            next_step=next_step or "fix the cases file (docs/howto/suites.md lists its keys)",
        )

    # --- tables -----------------------------------------------------------------------------------

    def table(self, document: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = document.get(name, {})
        if not isinstance(value, dict):
            self.fail(f"has {name} = {_shown(value)}, where a [{name}] table belongs")
        return value

    def suite_name(self, table: Any) -> str:
        if not isinstance(table, dict):
            self.fail(f"has {SUITE} = {_shown(table)}, where a [{SUITE}] table belongs")
        for key in table:
            if key != NAME:
                self.fail(
                    f"has the key {key!r} in [{SUITE}], which takes only {NAME!r}", suggestion=_close(key, [NAME])
                )
        name = table.get(NAME, self.path.stem)
        if not isinstance(name, str) or not name.strip():
            self.fail(f"has [{SUITE}] {NAME} = {_shown(name)}, which is not a name")
        return str(name).strip()

    def values(self, table: Mapping[str, Any], *, where: str, allow: Sequence[str] = ()) -> dict[str, RawCaseValue]:
        """A table's option values (scalars), each checked on its own."""
        values: dict[str, RawCaseValue] = {}
        for key, value in table.items():
            if key in allow:
                continue
            values[key] = self.scalar(key, value, where=where)
        return values

    def option(self, key: str, *, where: str) -> Option[Any]:
        option = self.options.get(key)
        if option is None:
            self.fail(
                f"has the key {key!r} in {where}, which is no option of crossval-per-token",
                suggestion=_close(key, list(self.options)),
            )
        return option

    def scalar(self, key: str, value: Any, *, where: str) -> RawCaseValue:
        option = self.option(key, where=where)
        if isinstance(option, Flag):
            if not isinstance(value, bool):
                self.fail(f"has {key} = {_shown(value)} in {where}, where true or false belongs")
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(f"has {key} = {_shown(value)} in {where}, where a string or a number belongs")
        text = value if isinstance(value, str) else repr(value)
        if isinstance(option, PathOption) or (option is MODEL and not _named_model(text)):
            text = self.absolute(text)
        return text

    def absolute(self, text: str) -> str:
        if not text.strip():
            return text
        path = Path(text.strip()).expanduser()
        return str(path if path.is_absolute() else self.path.parent / path)

    # --- the product and the explicit cases ------------------------------------------------------------

    def matrix_cases(self, matrix: Mapping[str, Any]) -> list[tuple[str, dict[str, RawCaseValue]]]:
        lists: dict[str, list[RawCaseValue]] = {}
        for key, value in matrix.items():
            if key == EXCLUDE:
                continue
            where = f"[{MATRIX}]"
            items = value if isinstance(value, list) else [value]
            if not items:
                self.fail(f"has {key} = [] in {where}: an empty list makes no case")
            values = [self.scalar(key, item, where=where) for item in items]
            if key == key_of(PROMPT_SET):
                values = [name for item in values for name in self.prompt_sets(str(item), where=where)]
            lists[key] = values
        excludes = self.excludes(matrix.get(EXCLUDE, []), keys=list(lists))
        if not lists:
            return []
        varying = [key for key, values in lists.items() if len(values) > 1] or list(lists)
        cases = []
        for combination in itertools.product(*lists.values()):
            chosen = dict(zip(lists, combination, strict=True))
            if any(all(chosen.get(k) == v for k, v in exclude.items()) for exclude in excludes):
                continue
            cases.append((" / ".join(_label(key, chosen[key]) for key in varying), chosen))
        return cases

    def excludes(self, value: Any, *, keys: list[str]) -> list[dict[str, RawCaseValue]]:
        where = f"[[{MATRIX}.{EXCLUDE}]]"
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(f"has {MATRIX}.{EXCLUDE} = {_shown(value)}, where [[{MATRIX}.{EXCLUDE}]] tables belong")
        excludes = []
        for table in value:
            for key in table:
                if key not in keys:
                    self.fail(
                        f"has the key {key!r} in {where}, which is not a list of [{MATRIX}]",
                        suggestion=_close(key, keys),
                    )
            if not table:
                self.fail(f"has an empty {where} table, which would leave out every case")
            excludes.append(self.values(table, where=where))
        return excludes

    def explicit_cases(self, value: Any) -> list[tuple[str, dict[str, RawCaseValue]]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(f"has {CASE} = {_shown(value)}, where [[{CASE}]] tables belong")
        cases = []
        for number, table in enumerate(value, start=1):
            where = f"[[{CASE}]] number {number}"
            name = table.get(NAME)
            if name is not None and (not isinstance(name, str) or not name.strip()):
                self.fail(f"has {NAME} = {_shown(name)} in {where}, which is not a name")
            values = self.values(table, where=where, allow=(NAME,))
            if not values:
                self.fail(f"has an empty {where}: a case sets at least one option")
            given_set = values.get(key_of(PROMPT_SET))
            expanded: list[str | None] = list(self.prompt_sets(str(given_set), where=where)) if given_set else [None]
            for prompt_set in expanded:
                own = dict(values) if prompt_set is None else {**values, key_of(PROMPT_SET): prompt_set}
                label = str(name).strip() if name else " / ".join(_label(k, v) for k, v in own.items())
                if name and len(expanded) > 1:
                    label = f"{label} / {prompt_set}"
                cases.append((label, own))
        return cases

    def prompt_sets(self, value: str, *, where: str) -> list[str]:
        try:
            return expand_prompt_set(value, option="prompt-set")
        except BadInput as exc:
            self.fail(f"has a bad prompt-set in {where}: {exc.message}", next_step=exc.next_step)

    # --- one case --------------------------------------------------------------------------------------------

    def case_values(
        self, defaults: Mapping[str, RawCaseValue], own: Mapping[str, RawCaseValue], *, case_id: str
    ) -> tuple[tuple[str, RawCaseValue], ...]:
        """The case's options (defaults, then its own), checked together as the command checks them."""
        base = dict(defaults)
        if TOKEN_SOURCES & set(own):
            base = {key: value for key, value in base.items() if key not in TOKEN_SOURCES}
        merged = {**base, **own}
        ordered = tuple((key, merged[key]) for key in self.options if key in merged)
        command_raw: dict[str, RawValue] = {}
        for key, value in ordered:
            option = self.options[key]
            try:
                option.parse(value)
            except BadInput as exc:
                self.fail(f"has a bad case {case_id!r}: {exc.message}", next_step=exc.next_step)
            command_raw[option.name] = value
        try:
            build_request(OptionValues(REQUEST_OPTIONS, command_raw))
        except BadInput as exc:
            self.fail(f"has a bad case {case_id!r}: {exc.message}", next_step=exc.next_step)
        return ordered


def _named_model(text: str) -> bool:
    raw = text.strip()
    return not raw or raw == GEMMA_NAME or raw.startswith(SYNTHETIC_PREFIX)


SELF_EVIDENT = frozenset({"model", "prompt", "prompt-file", "prompt-set", "tokens-file", "tokenizer", "candidate"})
"""Keys whose values say what they are in an id; any other shows as ``key=value``."""


def _label(key: str, value: RawCaseValue) -> str:
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if (
        key in {"model", "prompt-file", "tokens-file", "tokenizer"}
        and "/" in value
        and not value.startswith(SYNTHETIC_PREFIX)
    ):
        value = Path(value).name
    return _short(value) if key in SELF_EVIDENT else _short(f"{key}={value}")


def _short(value: Any) -> str:
    text = " ".join(str(value).split()) if isinstance(value, str) else repr(value)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _unique(label: str, seen: dict[str, int]) -> str:
    count = seen.get(label, 0) + 1
    seen[label] = count
    return label if count == 1 else f"{label} #{count}"


def _shown(value: Any) -> str:
    """A value as TOML writes it, cut short."""
    if isinstance(value, bool):
        return str(value).lower()
    text = json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (str, list, dict)) else repr(value)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _describe_key(key: str, value: Any) -> str:
    return f"a table [{key}]" if isinstance(value, dict) else f"the key {key!r}"


def _close(word: str, choices: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None
