"""The regular expressions ``--trace-names`` takes: the part of the language that Python's ``re``
and the shim's ``std::regex`` (ECMAScript grammar) read alike.

The filter is applied twice: by the shim, in C++, to the reference's tensors, and by the suite, in
Python, to a candidate's. A pattern the two read differently (or one only Python reads, such as
``(?P<x>...)``, ``(?i)`` or a lookbehind) would fail after the whole run or, worse, select other
tensors on each side. So a pattern is checked when the command starts against this subset:

- literal characters: printable ASCII other than ``. ^ $ * + ? ( ) [ ] { } | \\``;
- ``.``, ``^``, ``$``, and the escapes ``\\d \\D \\w \\W \\s \\S \\b \\B`` and ``\\`` before a
  punctuation character (``\\.``, ``\\-``, ``\\(``);
- classes ``[...]`` and ``[^...]`` of literals, ranges ``a-z`` and the escapes ``\\d \\w \\s``
  (a ``]`` first, a ``[`` inside, or ``[:alpha:]`` are refused: the two read them differently);
- groups ``( )`` and ``(?: )``, lookaheads ``(?= )`` and ``(?! )``, alternation ``|``;
- the quantifiers ``*``, ``+``, ``?`` and ``{m}``, ``{m,}``, ``{m,n}`` (m, n up to 1000), each
  optionally lazy (``*?``).
"""

from __future__ import annotations

import string

from bitnet_crossval.errors import BadInput

SUBSET = (
    "literals, '.', classes [a-z0-9_], \\d \\w \\s, groups ( ) and (?: ), lookaheads (?= ) (?! ), '|', "
    "and the quantifiers * + ? {m,n}"
)
EXAMPLE = "(attn|ffn)_norm-[0-9]+"

_META = frozenset(".^$*+?()[]{}|\\")
_PUNCTUATION = frozenset(string.punctuation)
_ESCAPES = frozenset("dDwWsS")
_BOUNDARIES = frozenset("bB")
_MAX_REPEAT = 1000


class _Refused(Exception):
    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what)
        self.what = what
        self.offset = offset


def check_name_pattern(pattern: str, *, flag: str = "--trace-names") -> None:
    """Bad input unless ``pattern`` stays within the subset both regular expression engines share."""
    try:
        _Parser(pattern).parse()
    except _Refused as refused:
        raise BadInput(
            f"{flag} {pattern!r} uses {refused.what} at offset {refused.offset}, which the reference's C++ "
            "regular expressions (ECMAScript) do not read as Python does",
            next_step=f"use only {SUBSET}; e.g. {flag} '{EXAMPLE}'",
        ) from None


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def parse(self) -> None:
        self._alternatives()
        if self.pos < len(self.text):  # only a ')' without its '(' stops the alternatives early
            raise _Refused("an unmatched ')'", self.pos)

    def _peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def _alternatives(self) -> None:
        self._sequence()
        while self._peek() == "|":
            self.pos += 1
            self._sequence()

    def _sequence(self) -> None:
        while self._peek() and self._peek() not in "|)":
            start = self.pos
            quantifiable = self._atom()
            if self._peek() in ("*", "+", "?", "{"):
                if not quantifiable:
                    raise _Refused(f"a quantifier {self._peek()!r} after {self.text[start : self.pos]!r}", self.pos)
                self._quantifier()

    def _atom(self) -> bool:
        """Consume one atom; whether a quantifier may follow it."""
        char = self._peek()
        if not char.isascii() or not char.isprintable():
            raise _Refused(f"the character {char!r} (only printable ASCII is read alike)", self.pos)
        if char == "(":
            return self._group()
        if char == "[":
            self._class()
            return True
        if char == "\\":
            return self._escape(in_class=False)
        if char in "^$":
            self.pos += 1
            return False
        if char == ".":
            self.pos += 1
            return True
        if char in _META:  # * + ? { } ] with nothing before them to quantify, or a stray bracket
            raise _Refused(f"a bare {char!r}", self.pos)
        self.pos += 1
        return True

    def _group(self) -> bool:
        start = self.pos
        self.pos += 1
        quantifiable = True
        if self._peek() == "?":
            kind = self.text[self.pos : self.pos + 2]
            if kind not in ("?:", "?=", "?!"):
                shown = self.text[start : start + 4] if kind == "?<" else self.text[start : start + 3]
                raise _Refused(f"the group {shown!r}", start)
            quantifiable = kind == "?:"  # a quantified lookahead is an error in ECMAScript
            self.pos += 2
        self._alternatives()
        if self._peek() != ")":
            raise _Refused("a '(' without its ')'", start)
        self.pos += 1
        return quantifiable

    def _class(self) -> None:
        start = self.pos
        self.pos += 1
        if self._peek() == "^":
            self.pos += 1
        if self._peek() == "]":
            raise _Refused("']' first in a class (Python reads it as a literal, ECMAScript as the end)", self.pos)
        items = 0
        while self._peek() != "]":
            char = self._peek()
            if not char:
                raise _Refused("a '[' without its ']'", start)
            if char == "[":
                raise _Refused("'[' inside a class", self.pos)
            item = self.pos
            low = self._class_item()
            items += 1
            if self._peek() == "-" and self._peek(1) not in ("]", ""):
                self.pos += 1
                high = self._class_item()
                if low is None or high is None or ord(high) < ord(low):
                    raise _Refused(f"the range {self.text[item : self.pos]!r}", item)
        if not items:
            raise _Refused("an empty class", start)
        self.pos += 1

    def _class_item(self) -> str | None:
        """One member of a class: the character it stands for, or None for an escape class (``\\d``)."""
        char = self._peek()
        if not char.isascii() or not char.isprintable():
            raise _Refused(f"the character {char!r} (only printable ASCII is read alike)", self.pos)
        if char == "\\":
            escaped = self._peek(1)
            self._escape(in_class=True)
            return escaped if escaped in _PUNCTUATION else None
        self.pos += 1
        return char

    def _escape(self, *, in_class: bool) -> bool:
        escaped = self._peek(1)
        if escaped in _ESCAPES or (escaped in _PUNCTUATION and escaped):
            self.pos += 2
            return True
        if escaped in _BOUNDARIES and escaped and not in_class:  # \b is a backspace inside a class
            self.pos += 2
            return False
        raise _Refused(f"the escape {self.text[self.pos : self.pos + 2]!r}", self.pos)

    def _quantifier(self) -> None:
        char = self._peek()
        if char == "{":
            self._braces()
        else:
            self.pos += 1
        if self._peek() == "?":
            self.pos += 1  # lazy: both read it
        if self._peek() in ("*", "+", "?", "{"):
            # "a*+" is possessive to Python 3.11 and an error to ECMAScript; "a**" an error to both.
            raise _Refused(f"a second quantifier {self._peek()!r}", self.pos)

    def _braces(self) -> None:
        start = self.pos
        end = self.text.find("}", start)
        body = self.text[start + 1 : end] if end > start else ""
        low, _comma, high = body.partition(",")
        if end < 0 or not low.isdigit() or (high and not high.isdigit()) or not body.isascii():
            raise _Refused(f"the repetition {self.text[start : end + 1 if end >= 0 else start + 1]!r}", start)
        if int(low) > _MAX_REPEAT or (high and (int(high) > _MAX_REPEAT or int(high) < int(low))):
            raise _Refused(f"the repetition {self.text[start : end + 1]!r}", start)
        self.pos = end + 1
