"""Command options declared once: name, type, bounds, default and help, in one table per command.

Each command's options are a tuple of :class:`Option` objects beside the library code they
configure (``crossval.options.CROSSVAL_OPTIONS``, ``repair.options.REPAIR``, ...). From that one
declaration come the command's flags and their help (``bitnet_crossval.tasks`` hands the table
to invoke), the parsing of what the user typed into a typed value, and its validation: a bad
value is :class:`~bitnet_crossval.errors.BadInput` (exit 6) with one sentence naming the flag
and an example of a good value. The library builds its request from the parsed values::

    values = OptionValues((MAX_TOKENS, VERBOSE), {"max_tokens": "8", "verbose": False})
    values[MAX_TOKENS]  # 8, an int

A value that was not given is the option's default; ``None`` where the default depends on
something known only later (the model, the environment), which the help then says in words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from bitnet_crossval.errors import BadInput

T = TypeVar("T")
L = TypeVar("L", bound=str)

RawValue = str | bool | None
"""What the command line hands over: the text typed, True/False for a flag, None when absent."""

FlagKind = Literal["text", "int", "flag"]
"""How a flag takes its value on the command line (``--x=STRING``, ``--x=INT``, ``--x``)."""

# Integers are written with ASCII digits only: int() would also take '²', '٣' or '1_000'.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,12}")


@dataclass(kw_only=True, eq=False, repr=False)
class Option(Generic[T]):
    """One option: ``name`` is the Python name (``max_tokens`` is the flag ``--max-tokens``).

    Options are compared by identity (each is declared once, as a module constant), so the option
    classes leave out the generated ``__eq__``, ``__hash__`` and ``__repr__``: each generated
    method costs an ``exec`` when its class is created, and every command loads every option class.
    For the same reason they are not ``frozen`` dataclasses (which generate ``__setattr__`` and
    ``__delattr__`` per class) but write-once: the two methods below, defined once, let
    ``__init__`` set each field and refuse any later change. A subclass that adds no field is not
    decorated again: it inherits ``__init__`` as it is.
    """

    name: str
    help: str
    default_text: str | None = None
    """The default in words, for the help, where ``str(default)`` would not say it."""
    positional: bool = False
    """Also taken without its flag, as the command's first free word (``invoke crossval-suite
    cases.toml``); invoke then requires it."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in self.__dict__ or name not in self.__dataclass_fields__:
            raise FrozenInstanceError(f"cannot assign to field {name!r}: options are declared once")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: options are declared once")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.flag})"

    @property
    def flag_kind(self) -> FlagKind:
        return "text"

    def parse(self, raw: RawValue) -> T:
        raise NotImplementedError

    def type_phrase(self) -> str:
        """The kind of value, as the help says it (``a whole number from 0 to 4096``)."""
        return ""

    def default_phrase(self) -> str:
        return self.default_text or ""

    def help_text(self) -> str:
        """The help line: what the option does, then the kind of value and the default."""
        details = [part for part in (self.type_phrase(), self._default_words()) if part]
        return f"{self.help} ({'; '.join(details)})" if details else self.help

    def _default_words(self) -> str:
        text = self.default_phrase()
        return f"default {text}" if text and not text.startswith("default") else text

    def _bad(self, raw: RawValue, what: str, example: str) -> BadInput:
        return BadInput(f"{self.flag} {raw!r} is not {what}", next_step=f"pass {self.flag} {example}")


class Flag(Option[bool]):
    """An on/off switch: ``--trace``."""

    @property
    def flag_kind(self) -> FlagKind:
        return "flag"

    def parse(self, raw: RawValue) -> bool:
        return bool(raw)


@dataclass(kw_only=True, eq=False, repr=False)
class Text(Option[str | None]):
    """Free text; ``None`` when the option was not given (``--prompt ""`` is the empty text)."""

    default: str | None = None

    def parse(self, raw: RawValue) -> str | None:
        if raw is None:
            return self.default
        return str(raw)

    def default_phrase(self) -> str:
        return self.default_text or (self.default or "")


class PathOption(Option[Path | None]):
    """A file or directory: ``~`` expanded, made absolute; ``None`` when not given or empty."""

    def parse(self, raw: RawValue) -> Path | None:
        text = "" if raw is None else str(raw).strip()
        if not text:
            return None
        if "\0" in text:
            raise BadInput(f"{self.flag} contains a NUL character", next_step=f"pass {self.flag} a file name")
        return Path(text).expanduser().absolute()


@dataclass(kw_only=True, eq=False, repr=False)
class Integer(Option[int]):
    """A whole number in ``[minimum, maximum]``."""

    default: int
    minimum: int = 0
    maximum: int
    example: int | None = None
    """The value a refusal suggests (default: the default)."""

    @property
    def flag_kind(self) -> FlagKind:
        return "int"

    def parse(self, raw: RawValue) -> int:
        text = "" if raw is None else str(raw).strip()
        if not text:
            return self.default
        if not _WHOLE_NUMBER.fullmatch(text) or not self.minimum <= int(text) <= self.maximum:
            example = self.default if self.example is None else self.example
            raise self._bad(raw, f"a whole number from {self.minimum} to {self.maximum}", str(example))
        return int(text)

    def type_phrase(self) -> str:
        return f"a whole number from {self.minimum} to {self.maximum}"

    def default_phrase(self) -> str:
        return self.default_text or str(self.default)


@dataclass(kw_only=True, eq=False, repr=False)
class _Bounded:
    """The bounds of a number option, and how it reads the text typed."""

    minimum: float = 0.0
    minimum_exclusive: bool = False
    maximum: float = math.inf
    unit: str = ""
    example: float

    def _number(self, option: Option[Any], raw: RawValue) -> float | None:
        text = "" if raw is None else str(raw).strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        low_ok = number > self.minimum if self.minimum_exclusive else number >= self.minimum
        if not (math.isfinite(number) and low_ok and number <= self.maximum):
            raise option._bad(raw, self._phrase(), f"{self.example:g}")
        return number

    def _phrase(self) -> str:
        unit = f" of {self.unit}" if self.unit else ""
        low = f"more than {self.minimum:g}" if self.minimum_exclusive else f"at least {self.minimum:g}"
        high = f" and at most {self.maximum:g}" if math.isfinite(self.maximum) else ""
        return f"a number{unit}, {low}{high}"


@dataclass(kw_only=True, eq=False, repr=False)
class Number(_Bounded, Option[float]):
    """A finite number within bounds, with a default."""

    default: float

    def parse(self, raw: RawValue) -> float:
        number = self._number(self, raw)
        return self.default if number is None else number

    def type_phrase(self) -> str:
        return self._phrase()

    def default_phrase(self) -> str:
        return self.default_text or f"{self.default:g}"


@dataclass(kw_only=True, eq=False, repr=False)
class OptionalNumber(_Bounded, Option[float | None]):
    """A finite number within bounds; ``None`` when not given (the default is decided later,
    which ``default_text`` says)."""

    def parse(self, raw: RawValue) -> float | None:
        return self._number(self, raw)

    def type_phrase(self) -> str:
        return self._phrase()


@dataclass(kw_only=True, eq=False, repr=False)
class Choice(Option[L]):
    """One of a fixed set of words; parsed into that word (typed as the ``Literal`` of the set)."""

    choices: tuple[L, ...]
    default: L

    def parse(self, raw: RawValue) -> L:
        text = "" if raw is None else str(raw).strip()
        return parse_choice(text or self.default, option=self.flag, choices=self.choices)

    def type_phrase(self) -> str:
        return _or_list(self.choices)

    def default_phrase(self) -> str:
        return self.default_text or str(self.default)


@dataclass(kw_only=True, eq=False, repr=False)
class OptionalChoice(Option[L | None]):
    """One of a fixed set of words, or ``None`` when not given (the default is decided later,
    which ``default_text`` says)."""

    choices: tuple[L, ...]

    def parse(self, raw: RawValue) -> L | None:
        text = "" if raw is None else str(raw).strip()
        return parse_choice(text, option=self.flag, choices=self.choices) if text else None

    def type_phrase(self) -> str:
        return _or_list(self.choices)


def parse_choice(text: str, *, option: str, choices: tuple[L, ...]) -> L:
    """``text`` as the member of ``choices`` it names; anything else is bad input listing them."""
    for choice in choices:
        if text == choice:
            return choice
    raise BadInput(f"{option} {text!r} is not one of {', '.join(choices)}", next_step=f"pass {option} {choices[0]}")


def _or_list(words: Iterable[str]) -> str:
    items = list(words)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


# --- options every command has ------------------------------------------------------------------

VERBOSE = Flag(name="verbose", help="show every command and a traceback on errors")
OutputFormat = Literal["text", "json"]
FORMAT: Choice[OutputFormat] = Choice(
    name="format",
    help="text for people (on stderr), or json: one JSON document on stdout and nothing else there",
    choices=("text", "json"),
    default="text",
)


class OptionValues:
    """The values of one command line, parsed on first use by the options that declare them."""

    def __init__(self, options: Iterable[Option[Any]], raw: Mapping[str, RawValue]) -> None:
        self._options = {option.name: option for option in options}
        unknown = sorted(set(raw) - set(self._options))
        if unknown:
            raise ValueError(f"values for undeclared options: {', '.join(unknown)}")
        self._raw = dict(raw)
        self._parsed: dict[str, Any] = {}

    def __getitem__(self, option: Option[T]) -> T:
        if self._options.get(option.name) is not option:
            raise KeyError(f"{option.flag} is not an option of this command")
        if option.name not in self._parsed:
            self._parsed[option.name] = option.parse(self._raw.get(option.name))
        value: T = self._parsed[option.name]
        return value

    def given(self, option: Option[Any]) -> bool:
        """Whether the command line set ``option`` (a flag: turned on; text: any value)."""
        raw = self._raw.get(option.name)
        return (
            bool(raw)
            if isinstance(raw, bool)
            else raw is not None and (str(raw).strip() != "" or isinstance(option, Text))
        )

    def raw(self, option: Option[Any]) -> RawValue:
        return self._raw.get(option.name)

    def check_all(self) -> None:
        """Parse every declared option now, so any bad value is reported before work starts."""
        for option in self._options.values():
            self[option]
