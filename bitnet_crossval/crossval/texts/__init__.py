"""Built-in sets of real text, for evaluating N positions of real text the way a quantisation or
an engine is measured (``--prompt-set``, or a suite's ``prompt-set``).

A set is a named list of passages shipped with the package (one ``.txt`` file each, in a
directory named after the set). Every passage is in the public domain; ``LICENSE.md`` beside
this module records each one's work, author, date and status, and a new passage gets its row
there before it is shipped.

A prompt set is named ``SET`` (every passage of the set, in order, separated by a blank line),
``SET/TEXT`` (one passage), or, in a cases file only, ``SET/*`` (one case per passage)::

    prompt_text(parse_prompt_set("classics/moby-dick"))  # the opening of Moby-Dick
    expand_prompt_set("classics/*")  # ["classics/gettysburg", "classics/declaration", ...]

How many positions are evaluated is the crossval's business: ``--prompt-tokens N`` keeps the
first N tokens of whatever the prompt tokenizes to, and with a prompt set asks for exactly N:
when the set's text is shorter, :func:`joined_text` continues it with the set's passages, in
order and over again, so a context of thousands of positions is filled with real text.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from bitnet_crossval.errors import BadInput

EVERY_TEXT = "*"


@dataclass(frozen=True, kw_only=True)
class BuiltinText:
    name: str
    work: str
    author: str
    year: int

    def read(self, set_name: str) -> str:
        resource = resources.files(__name__).joinpath(set_name).joinpath(f"{self.name}.txt")
        return resource.read_text(encoding="utf-8").strip()


@dataclass(frozen=True, kw_only=True)
class TextSet:
    name: str
    description: str
    texts: tuple[BuiltinText, ...]

    def names(self) -> list[str]:
        return [text.name for text in self.texts]


CLASSICS = TextSet(
    name="classics",
    description="six passages of English prose and oratory, 1776-1865 (about 1,700 words), all public domain",
    texts=(
        BuiltinText(name="gettysburg", work="the Gettysburg Address", author="Abraham Lincoln", year=1863),
        BuiltinText(name="declaration", work="the Declaration of Independence", author="Thomas Jefferson", year=1776),
        BuiltinText(name="pride-and-prejudice", work="Pride and Prejudice", author="Jane Austen", year=1813),
        BuiltinText(name="moby-dick", work="Moby-Dick", author="Herman Melville", year=1851),
        BuiltinText(name="two-cities", work="A Tale of Two Cities", author="Charles Dickens", year=1859),
        BuiltinText(name="alice", work="Alice's Adventures in Wonderland", author="Lewis Carroll", year=1865),
    ),
)

TEXT_SETS: dict[str, TextSet] = {CLASSICS.name: CLASSICS}
"""Every built-in set by name; a new set is a directory of passages, its rows in LICENSE.md and one entry here."""


@dataclass(frozen=True, kw_only=True)
class PromptSet:
    """A parsed prompt-set name: a whole set, or one passage of it."""

    set: TextSet
    text: BuiltinText | None = None

    @property
    def label(self) -> str:
        return self.set.name if self.text is None else f"{self.set.name}/{self.text.name}"


def _names() -> str:
    return ", ".join(f"{s.name} ({', '.join(s.names())})" for s in TEXT_SETS.values())


def parse_prompt_set(value: str, *, option: str = "--prompt-set") -> PromptSet:
    """``SET`` or ``SET/TEXT``; anything else is :class:`BadInput` naming what exists."""
    name, _, text_name = value.strip().partition("/")
    text_set = TEXT_SETS.get(name)
    next_step = f"pass {option} SET or SET/TEXT, from: {_names()}"
    if text_set is None:
        raise BadInput(f"{option} {value!r} names no built-in text set", next_step=next_step)
    if not text_name:
        return PromptSet(set=text_set)
    for text in text_set.texts:
        if text.name == text_name:
            return PromptSet(set=text_set, text=text)
    if text_name == EVERY_TEXT:
        raise BadInput(
            f"{option} {value!r}: '{EVERY_TEXT}' (one case per passage) is for a suite's cases file",
            next_step=f"pass {option} {text_set.name} (every passage as one prompt) or {text_set.name}/TEXT",
        )
    raise BadInput(f"{option} {value!r}: the set {name} has no text {text_name!r}", next_step=next_step)


def expand_prompt_set(value: str, *, option: str = "prompt-set") -> list[str]:
    """``SET/*`` as one name per passage of the set; any other name, checked, as itself."""
    name, _, text_name = value.strip().partition("/")
    if text_name == EVERY_TEXT and name in TEXT_SETS:
        return [f"{name}/{text}" for text in TEXT_SETS[name].names()]
    return [parse_prompt_set(value, option=option).label]


def prompt_text(choice: PromptSet) -> str:
    """The prompt a prompt set stands for: one passage, or every passage joined by a blank line."""
    texts = choice.set.texts if choice.text is None else (choice.text,)
    return "\n\n".join(text.read(choice.set.name) for text in texts)


def joined_text(choice: PromptSet, min_chars: int) -> str:
    """The text of ``choice``, continued with every passage of its set in order (from the first,
    over and over) and joined by blank lines, until it is at least ``min_chars`` characters long."""
    parts = [prompt_text(choice)]
    length = len(parts[0])
    passages = [text.read(choice.set.name) for text in choice.set.texts]
    while length < min_chars:
        for passage in passages:
            parts.append(passage)
            length += len(passage) + 2
            if length >= min_chars:
                break
    return "\n\n".join(parts)
