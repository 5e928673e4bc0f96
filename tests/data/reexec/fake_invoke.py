"""Stands in for the `invoke` program on PATH in tests/integration/test_reexec_real.py.

The test installs it as `<tmp>/bin/invoke` with a shebang naming the real interpreter. Like
invoke finding tasks.py, it runs ./driver.py from the current directory, with its own
arguments as the driver's.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

driver = Path("driver.py")
if not driver.is_file():
    sys.stderr.write(f"fake invoke: no driver.py in {Path.cwd()}\n")
    raise SystemExit(96)
sys.argv = [str(driver), *sys.argv[1:]]
runpy.run_path(str(driver), run_name="__main__")
