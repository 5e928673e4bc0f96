"""Ask for a float copy in a process of its own, for the tests of concurrent requests.

`float_copy_worker.py MODEL CACHE_ROOT RESULT_JSON (--shim PATH | --fake-started FILE --fake-release FILE)`

Writes the returned record as JSON to RESULT_JSON; a suite error is rendered on stderr and
becomes the exit code. With ``--fake-*`` the backend is the Python stand-in, touching
``--fake-started`` when it begins and working until ``--fake-release`` exists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitnet_crossval.errors import SuiteError
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.dequantize import Dequantizer, float_copy
from bitnet_crossval.store.layout import CacheLayout
from tests.unit.reference.fake_dequantizer import FakeDequantizer

parser = argparse.ArgumentParser()
parser.add_argument("model", type=Path)
parser.add_argument("cache", type=Path)
parser.add_argument("result", type=Path)
parser.add_argument("--shim", type=Path)
parser.add_argument("--fake-started", type=Path)
parser.add_argument("--fake-release", type=Path)
args = parser.parse_args()

backend: Dequantizer
if args.shim is not None:
    backend = Shim(args.shim)
else:
    backend = FakeDequantizer(started=args.fake_started, wait_for=args.fake_release)
try:
    copy = float_copy(args.model, backend, cache=CacheLayout(args.cache), threads=1, lock_timeout=120)
except SuiteError as exc:
    print(exc.render(), file=sys.stderr)
    sys.exit(exc.exit_code)
args.result.write_text(json.dumps(copy.to_json()), encoding="utf-8")
