"""``python -m bitnet_crossval.crossval.hf``: the hf candidate's child process (see :mod:`.runner`)."""

from __future__ import annotations

from bitnet_crossval.crossval.hf.runner import main

raise SystemExit(main())
