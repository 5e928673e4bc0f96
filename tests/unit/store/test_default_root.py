"""The default cache root: platformdirs' answer, computed on Linux without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.store import layout

# Each case: the variables set (None removes one). The child compares both answers per case.
CASES: list[dict[str, str | None]] = [
    {"XDG_CACHE_HOME": None, "HOME": "/home/someone"},
    {"XDG_CACHE_HOME": "/var/tmp/xdg", "HOME": "/home/someone"},
    {"XDG_CACHE_HOME": "/var/tmp/xdg/", "HOME": "/home/someone/"},
    {"XDG_CACHE_HOME": "", "HOME": "/home/someone"},
    {"XDG_CACHE_HOME": "relative/cache", "HOME": "/home/someone"},
    {"XDG_CACHE_HOME": None, "HOME": "relative-home"},
    {"XDG_CACHE_HOME": None, "HOME": ""},
    {"XDG_CACHE_HOME": None, "HOME": None},
]

# Answers each case in a fresh interpreter, with the suite's function or with platformdirs'.
CHILD = """
import json, os, sys
if sys.argv[2] == "suite":
    from bitnet_crossval.store.layout import default_cache_root as answer
else:
    import platformdirs
    answer = lambda: platformdirs.user_cache_path("bitnet", appauthor=False)
answers = []
for case in json.loads(sys.argv[1]):
    for name, value in case.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    answers.append(str(answer()))
print(json.dumps({"answers": answers, "imported_platformdirs": "platformdirs" in sys.modules}))
"""


def _answers(which: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANDROID_")}
    command = [sys.executable, "-c", CHILD, json.dumps(CASES), which]
    document: dict[str, Any] = json.loads(
        subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    )
    return document


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rule computed without platformdirs is Linux's")
def test_linux_answer_is_platformdirs_answer_without_importing_it() -> None:
    ours, theirs = _answers("suite"), _answers("platformdirs")
    assert not ours["imported_platformdirs"]
    assert [Path(p) for p in ours["answers"]] == [Path(p) for p in theirs["answers"]]
    assert Path(ours["answers"][1]) == Path("/var/tmp/xdg/bitnet")  # the cases do reach both branches
    assert Path(ours["answers"][0]) == Path("/home/someone/.cache/bitnet")


def test_no_home_at_all_is_bad_input_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(BadInput) as caught:
        layout._xdg_cache_home({"HOME": "relative"})
    assert "BITNET_CACHE_DIR" in (caught.value.next_step or "")


def test_account_home_when_home_is_not_absolute() -> None:
    import pwd

    expected = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache"
    assert layout._xdg_cache_home({"HOME": "relative"}) == expected
    assert layout._xdg_cache_home({}) == expected
    assert layout._xdg_cache_home({"XDG_CACHE_HOME": "/x", "HOME": "relative"}) == Path("/x")
