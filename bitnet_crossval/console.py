"""The ``bitnet-crossval`` console script: invoke's own ``Program`` over the suite's tasks.

It runs the same collection as ``invoke`` does from the repository, from any directory, after
``pip install``. ``python -m bitnet_crossval`` is the same program.
"""

from __future__ import annotations

import sys

from bitnet_crossval import __version__
from bitnet_crossval.repair import reexec

PROGRAM_NAME = "bitnet-crossval"


def main(argv: list[str] | None = None) -> None:
    from invoke.program import Program

    from bitnet_crossval.tasks import ns

    reexec.set_entry_point(reexec.EntryPoint(program=PROGRAM_NAME, module="bitnet_crossval"))
    program = Program(namespace=ns, name="bitnet crossval suite", binary=PROGRAM_NAME, version=__version__)
    program.run(argv if argv is None else [PROGRAM_NAME, *argv])


if __name__ == "__main__":  # pragma: no cover (the console script and __main__ call main())
    main(sys.argv[1:])
