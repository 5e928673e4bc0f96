"""`invoke preflight` with real processes on the small fake backend: the repair flow, the
guard, the CI default, JSON output, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnet_crossval.store.constants import read_constants
from tests.helpers import HANG_SECONDS, REPO_ROOT, copy_fake_llama, run_invoke, wait_for

pytestmark = pytest.mark.integration


def test_missing_backend_without_repair_is_one_sentence_and_a_next_step(base_env: dict[str, str]) -> None:
    result = run_invoke(["preflight", "--backend", "llama", "--repair", "never"], env=base_env)
    assert result.returncode == 1
    assert "llama.cpp is not available" in result.stderr
    assert "--repair auto" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_json_mode_prints_one_document_on_stdout_even_on_failure(base_env: dict[str, str]) -> None:
    result = run_invoke(["preflight", "--backend", "llama", "--repair", "never", "--json"], env=base_env)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["available"] is False
    assert document["error"]["exit_code"] == 1


def test_ci_defaults_to_no_repair(base_env: dict[str, str], cache_dir: Path) -> None:
    result = run_invoke(["preflight", "--backend", "llama"], env={**base_env, "CI": "true"})
    assert result.returncode == 1
    assert not (cache_dir / "installs" / "llama").exists()


def test_guard_set_by_hand_never_repairs(base_env: dict[str, str], cache_dir: Path, tmp_path: Path) -> None:
    source = copy_fake_llama(tmp_path / "src")
    env = {**base_env, "BITNET_REPAIR_PARENT": "1", "LLAMA_CPP_SOURCE": str(source)}
    result = run_invoke(["preflight", "--backend", "llama", "--repair", "auto"], env=env)
    assert result.returncode == 8
    assert "still unavailable after the repair" in result.stderr
    assert not (cache_dir / "installs" / "llama").exists()


def test_bad_repair_mode_and_backend_are_exit_6(base_env: dict[str, str]) -> None:
    assert run_invoke(["preflight", "--backend", "llama", "--repair", "sometimes"], env=base_env).returncode == 6
    assert run_invoke(["preflight", "--backend", "gpt"], env=base_env).returncode == 6


def test_broken_dir_override_is_bad_input(base_env: dict[str, str], tmp_path: Path) -> None:
    result = run_invoke(
        ["preflight", "--backend", "llama", "--repair", "auto"], env={**base_env, "LLAMA_CPP_DIR": str(tmp_path)}
    )
    assert result.returncode == 6
    assert "LLAMA_CPP_DIR" in result.stderr


def test_repair_installs_rebuilds_reexecs_and_the_child_validates(
    base_env: dict[str, str], cache_dir: Path, tmp_path: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src")
    env = {**base_env, "LLAMA_CPP_SOURCE": str(source), "BITNET_DETERMINISTIC": "1", "BITNET_SEED": "42"}
    result = run_invoke(["preflight", "--backend", "llama", "--repair", "auto", "--json"], env=env)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "repairing llama.cpp" in err
    assert "[reexec] Attempting exec()..." in err
    assert "Fallback" not in err  # the fast path replaced the process
    assert "(auto-repaired)" in err
    document = json.loads(result.stdout)  # only the child printed, and only JSON
    assert document["available"] is True and document["repaired"] is True
    constants = read_constants(cache_dir / "constants.json")
    assert constants.status == "ok" and constants.has("llama")

    again = run_invoke(["preflight", "--backend", "llama"], env=env)
    assert again.returncode == 0, again.stderr
    assert "repairing" not in again.stderr and "[reexec]" not in again.stderr
    assert "llama.cpp is available" in again.stderr


def test_repair_falls_back_to_an_invoke_subprocess_when_the_interpreter_is_gone(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    """A virtual environment removed while the build runs (AC2): the fast path is impossible,
    the `invoke` on PATH runs the same command with the guard, and its exit code is ours."""
    import site
    import subprocess
    import sys

    venv = tmp_path / "throwaway-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = next(
        Path(p) for p in (*site.getsitepackages(), site.getusersitepackages()) if (Path(p) / "invoke").is_dir()
    )
    site_dir = next(venv.glob("lib/python*/site-packages"))
    (site_dir / "suite-deps.pth").write_text(f"{purelib}\n")
    venv_python = venv / "bin" / "python"

    source = copy_fake_llama(tmp_path / "src")
    started, release = tmp_path / "started", tmp_path / "release"
    env = {
        **base_env,
        "LLAMA_CPP_SOURCE": str(source),
        "FAKE_LLAMA_STARTED": str(started),
        "FAKE_LLAMA_RELEASE": str(release),
    }
    proc = subprocess.Popen(
        [str(venv_python), "-m", "invoke", "preflight", "--backend", "llama", "--repair", "auto"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(started, proc=proc)
    for entry in (venv / "bin").iterdir():  # the environment disappears mid-repair
        entry.unlink()
    release.touch()
    _out, err = proc.communicate(timeout=HANG_SECONDS)
    assert proc.returncode == 0, err
    assert "[reexec] exe exists: false" in err
    assert "[reexec] Trying invoke fallback..." in err
    assert "[reexec] Fallback child exited with code: 0" in err
    assert "(auto-repaired)" in err
