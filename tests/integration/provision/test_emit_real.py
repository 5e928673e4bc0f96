"""The emitted lines, evaluated by real shells, produce exactly the intended environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_crossval.provision.emit import emit_lines
from tests.helpers import HANG_SECONDS

pytestmark = pytest.mark.integration

VALUES = {
    "LLAMA_CPP_DIR": '/tmp/with space/$HOME/`id`/it\'s "quoted"',
    "BITNET_CPP_DIR": "\u00fcn\u00efc\u00f6d\u00e9 \u2713 ${X} $(echo no) back\\slash",
    "BITNET_EMIT_NEWLINE": "line one\nline two\n",
    "BITNET_EMIT_EMPTY": "",
}
LIB_DIR = "/opt/llama lib/$x/'q'"
PRINT_ENV = "import json, os, sys; print(json.dumps({k: os.environ.get(k) for k in sys.argv[1:]}))"
NAMES = [*VALUES, "LD_LIBRARY_PATH"]

# (initial LD_LIBRARY_PATH or None for unset, expected afterwards)
INITIAL = [
    (None, LIB_DIR),
    ("", LIB_DIR),
    ("/old/lib:/other lib", f"{LIB_DIR}:/old/lib:/other lib"),
]


def shell_env(base_env: dict[str, str], initial: str | None) -> dict[str, str]:
    env = {k: v for k, v in base_env.items() if k != "LD_LIBRARY_PATH"}
    if initial is not None:
        env["LD_LIBRARY_PATH"] = initial
    return env


def read_env(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, str | None]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=HANG_SECONDS, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, str | None] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
@pytest.mark.parametrize(("initial", "expected_lib"), INITIAL, ids=["unset", "empty", "set"])
def test_posix_shells_eval_the_lines(
    shell: str, initial: str | None, expected_lib: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed")
    lines = emit_lines("sh", set_vars=VALUES, prepend_paths={"LD_LIBRARY_PATH": LIB_DIR})
    script = tmp_path / "emitted.sh"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # What users type: eval "$(invoke setup-cpp-auto --emit sh)"; `cat` stands in for invoke.
    driver = 'eval "$(cat "$1")" && exec "$2" -c "$3" "$@"'
    argv = [program, "-c", driver, "sh", str(script), sys.executable, PRINT_ENV]
    # "$@" still holds script, python and the code; the child ignores argv it was not asked about.
    result = read_env([*argv, *NAMES], shell_env(base_env, initial), tmp_path)
    assert {k: result[k] for k in VALUES} == VALUES
    assert result["LD_LIBRARY_PATH"] == expected_lib


@pytest.mark.parametrize(("initial", "expected_lib"), INITIAL, ids=["unset", "empty", "set"])
def test_fish_sources_the_lines(
    initial: str | None, expected_lib: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    fish = shutil.which("fish")
    if fish is None:
        pytest.skip("fish is not installed (the fish lines are still checked by tests/unit/provision/test_emit.py)")
    lines = emit_lines("fish", set_vars=VALUES, prepend_paths={"LD_LIBRARY_PATH": LIB_DIR})
    script = tmp_path / "emitted.fish"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = shell_env(base_env, initial)
    env["HOME"] = str(tmp_path)  # no user config.fish
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    driver = f"cat {script} | source; and exec {sys.executable} -c '{PRINT_ENV}' {' '.join(NAMES)}"
    result = read_env([fish, "--no-config", "-c", driver], env, tmp_path)
    assert {k: result[k] for k in VALUES} == VALUES
    assert result["LD_LIBRARY_PATH"] == expected_lib
