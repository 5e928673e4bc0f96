"""The one context every command shares: where things are, the environment, the backend state
read once at start-up from the constants file, and this process's backend detections."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_crossval.backends.detect import Detector
from bitnet_crossval.store.constants import Constants, read_constants
from bitnet_crossval.store.layout import (
    CONSTANTS_ENV,
    CacheLayout,
    cache_root_from,
    check_cache_root,
    constants_path_from,
)
from bitnet_crossval.store.lock import lock_timeout_from
from bitnet_crossval.util.envnum import env_float
from bitnet_crossval.util.files import refuse_non_regular
from bitnet_crossval.util.retry import RetryPolicy, net_timeout
from bitnet_crossval.util.ui import DEFAULT_PROGRESS_INTERVAL, PROGRESS_INTERVAL_ENV


@dataclass(frozen=True, kw_only=True)
class SuiteContext:
    cache: CacheLayout
    env: Mapping[str, str]
    constants: Constants
    detector: Detector = field(compare=False)
    started_ns: int = field(default_factory=time.time_ns, compare=False)
    """``time.time_ns()`` before the context read anything (a file changed after it may have
    changed while this process read it)."""

    @property
    def constants_path(self) -> Path:
        return self.constants.path


def load_context(environ: Mapping[str, str] | None = None) -> SuiteContext:
    """The context of this process; the suite's environment variables are validated here, when a
    command starts, so a bad value is reported before any lock, download or build."""
    started_ns = time.time_ns()
    env = dict(os.environ if environ is None else environ)
    root = cache_root_from(env)
    check_cache_root(root)
    constants_path = constants_path_from(env, root)
    refuse_non_regular(constants_path, what=f"the constants file ({CONSTANTS_ENV})")
    lock_timeout_from(env)
    RetryPolicy.from_env(env)
    net_timeout(env)
    env_float(env, PROGRESS_INTERVAL_ENV, default=DEFAULT_PROGRESS_INTERVAL, exclusive_minimum=True, example="30")
    cache = CacheLayout(root)
    return SuiteContext(
        cache=cache,
        env=env,
        constants=read_constants(constants_path),
        detector=Detector(env=env, cache=cache),
        started_ns=started_ns,
    )
