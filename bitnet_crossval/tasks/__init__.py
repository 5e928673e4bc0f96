"""The invoke task collections, one module per domain, gathered into one root namespace."""

from __future__ import annotations

from invoke.collection import Collection

from .crossval import crossval_per_token
from .preflight import preflight
from .rebuild import rebuild
from .selfcheck import crossval_selfcheck
from .setup import setup_cpp_auto
from .suite import crossval_merge, crossval_suite

ns = Collection()
for _task in (
    preflight,
    setup_cpp_auto,
    rebuild,
    crossval_per_token,
    crossval_selfcheck,
    crossval_suite,
    crossval_merge,
):
    ns.add_task(_task)
ns.configure({"run": {"echo": False}})
