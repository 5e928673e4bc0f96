"""``python -m bitnet_crossval``: the console script without its launcher."""

from __future__ import annotations

from bitnet_crossval.console import main

main()
