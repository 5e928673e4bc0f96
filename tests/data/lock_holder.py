"""Hold the suite's lock in a real process: `lock_holder.py LOCK READY_FILE RELEASE_FILE [TIMEOUT]`.

Touches READY_FILE once the lock is held, then waits until RELEASE_FILE exists.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_crossval.errors import SuiteError
from bitnet_crossval.store.lock import exclusive_lock

lock_path, ready, release = (Path(a) for a in sys.argv[1:4])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
try:
    with exclusive_lock(lock_path, purpose="hold the lock for a test", timeout=timeout):
        ready.touch()
        while not release.exists():
            time.sleep(0.02)
except SuiteError as exc:
    print(exc.render(), file=sys.stderr)
    sys.exit(exc.exit_code)
