"""The options of ``setup-cpp-auto`` that choose what to install, each declared once.

A module of its own, importing nothing heavy: every ``invoke`` run, even ``invoke --list``,
reads the option tables, and :mod:`bitnet_crossval.provision.install` brings the fetching and
building code with it.
"""

from __future__ import annotations

from typing import Literal

from bitnet_crossval.backends.specs import BACKEND_NAMES
from bitnet_crossval.util.options import Choice, Flag, Text

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
