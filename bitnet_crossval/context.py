"""The one context every task shares: where things are, the environment, and the backend
state read once at start-up from the constants file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.repair.reexec import is_repair_child
from bitnet_crossval.store.constants import Constants, read_constants
from bitnet_crossval.store.layout import CacheLayout, cache_root_from, constants_path_from


@dataclass(frozen=True, kw_only=True)
class SuiteContext:
    cache: CacheLayout
    env: Mapping[str, str]
    constants: Constants

    @property
    def constants_path(self) -> Path:
        return self.constants.path

    @property
    def is_repair_child(self) -> bool:
        """Set on the re-executed child: it validates and never repairs (the recursion guard)."""
        return is_repair_child(self.env)


def load_context(environ: Mapping[str, str] | None = None) -> SuiteContext:
    env = dict(os.environ if environ is None else environ)
    root = cache_root_from(env)
    return SuiteContext(
        cache=CacheLayout(root),
        env=env,
        constants=read_constants(constants_path_from(env, root)),
    )
