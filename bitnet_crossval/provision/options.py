"""The options of ``setup-cpp-auto``, each declared once.

A module of its own, importing nothing heavy: every ``invoke`` run, even ``invoke --list``,
reads the option tables, and :mod:`bitnet_crossval.provision.install` brings the fetching and
building code with it (:mod:`~bitnet_crossval.provision.cmake` runs ``--jobs``,
:mod:`~bitnet_crossval.provision.emit` writes ``--emit``'s lines).
"""

from __future__ import annotations

from typing import Literal

from bitnet_crossval.backends.specs import BACKEND_NAMES
from bitnet_crossval.util.options import Choice, Flag, Integer, OptionalChoice, Text

SetupBackend = Literal["llama", "bitnet", "all"]
SETUP_BACKEND: Choice[SetupBackend] = Choice(
    name="backend", help="the backend to set up", choices=(*BACKEND_NAMES, "all"), default="llama"
)
SOURCE = Text(
    name="source",
    help="a local directory, a git URL (URL@REF), a .tar.gz/.zip archive, or pypi (llama only)",
    default_text="$LLAMA_CPP_SOURCE / $BITNET_CPP_SOURCE, else the pinned commit",
)
REF = Text(name="ref", help="the git commit, tag or branch to build (overrides @REF)")
FORCE = Flag(name="force", help="rebuild and reinstall even when the install is up to date")

MAX_JOBS = 1024
JOBS = Integer(
    name="jobs",
    help="parallel compile jobs",
    default=0,
    maximum=MAX_JOBS,
    example=2,
    default_text="0, one per CPU",
)

Shell = Literal["sh", "fish", "pwsh", "cmd"]
SHELLS: tuple[Shell, ...] = ("sh", "fish", "pwsh", "cmd")
EMIT: OptionalChoice[Shell] = OptionalChoice(
    name="emit",
    help="print only the shell lines that point a shell at the install, for this shell",
    choices=SHELLS,
    default_text="none: build and install only",
)
