"""The ``bitnet-crossval`` console script as a user gets it: the wheel built from the source
tree, installed (not editable) into a fresh venv, and run from a directory that is not the
repository.

The wheel is built once per module from a copy of the tree (so no ``build/`` or egg-info is
left in the checkout). The venv gets the suite's dependencies without downloading anything:
a ``.pth`` file in its site-packages names this test environment's site-packages. Python does
not process ``.pth`` files found in a directory added that way, so the editable install of the
checkout (an ``__editable__`` finder started by a ``.pth``) stays out, and every import of
``bitnet_crossval`` comes from the wheel.

One cache serves the module: warmed with the console script (``setup-cpp-auto`` from a fake
llama.cpp, then ``rebuild``); each repair test then deletes the install and repairs it from a
fresh copy of the fake source, so the fake build really runs (its rendezvous files make it
wait) while the shim, whose build tree depends only on the install's path, is only relinked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import invoke
import pytest

from tests.conftest import child_env
from tests.helpers import HANG_SECONDS, REPO_ROOT, copy_fake_llama, tool_only_path, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout, exec() and shebang launchers"),
]

PROGRAM = "bitnet-crossval"
WAIT = HANG_SECONDS  # every child is bounded by this, for a hang
# Where this interpreter finds invoke and the suite's other dependencies.
DEPS_SITE = Path(invoke.__file__).resolve().parent.parent
# What a copy of the tree leaves behind: VCS data, caches, build output, local venvs.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".nox", ".venv", "venv",
    ".mypy_cache", ".ruff_cache", ".pytest_cache",
)  # fmt: skip
REPAIR = ["preflight", "--backend", "llama", "--repair", "auto"]


# --- the wheel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltWheel:
    path: Path
    source: Path
    """The copy of the tree it was built from (what it must contain)."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> BuiltWheel:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE, symlinks=True)
    dist = work / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("*.whl")
    return BuiltWheel(path=built, source=source)


def source_packages(source: Path) -> dict[str, Path]:
    """The Python packages the wheel must hold, as paths inside it, each with its directory in
    the tree: every directory holding a module under ``bitnet_crossval/``."""
    root = source / "bitnet_crossval"
    found: dict[str, Path] = {}
    for module in root.rglob("*.py"):
        if "__pycache__" not in module.parts:
            found["/".join(["bitnet_crossval", *module.parent.relative_to(root).parts])] = module.parent
    return found


def test_wheel_ships_every_package_under_bitnet_crossval_and_no_top_level_tasks(wheel: BuiltWheel) -> None:
    names = set(zipfile.ZipFile(wheel.path).namelist())
    top_level = {name.split("/", 1)[0] for name in names}
    (dist_info,) = (name for name in top_level if name.endswith(".dist-info"))
    assert top_level == {"bitnet_crossval", dist_info}, sorted(top_level)
    assert not any(name.startswith(("tasks/", "cpp/")) or name == "tasks.py" for name in names)

    shipped = {name.rsplit("/", 1)[0] for name in names if name.endswith(".py") and not name.startswith(dist_info)}
    expected = source_packages(wheel.source)
    assert "bitnet_crossval/tasks" in shipped
    # A directory without __init__.py is no package to setuptools' discovery: it would be missing here.
    assert sorted(expected.keys() - shipped) == [], "packages missing from the wheel"
    assert sorted(shipped - expected.keys()) == [], "the wheel ships packages the tree does not have"
    modules = {
        f"{package}/{module.name}" for package, directory in expected.items() for module in directory.glob("*.py")
    }
    assert sorted(modules - names) == [], "modules missing from the wheel"
    # The shim's sources, which `rebuild` compiles wherever the suite is installed.
    assert "bitnet_crossval/cpp/CMakeLists.txt" in names
    cpp_files = {
        "bitnet_crossval/cpp/" + path.relative_to(wheel.source / "bitnet_crossval" / "cpp").as_posix()
        for path in (wheel.source / "bitnet_crossval" / "cpp").rglob("*")
        if path.is_file()
    }
    assert sorted(cpp_files - names) == [], "shim sources missing from the wheel"
    # The console script.
    entry_points = zipfile.ZipFile(wheel.path).read(f"{dist_info}/entry_points.txt")
    assert "bitnet-crossval = bitnet_crossval.console:main" in entry_points.decode()


# --- the venv ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    root: Path
    python: Path
    script: Path
    """The console script pip wrote into bin/."""
    site: Path


@pytest.fixture(scope="module")
def venv(wheel: BuiltWheel, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("console") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=WAIT)
    python = root / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel.path)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    (site,) = root.glob("lib/python*/site-packages")
    (site / "suite-deps.pth").write_text(f"{DEPS_SITE}\n", encoding="utf-8")
    return Venv(root=root, python=python, script=root / "bin" / PROGRAM, site=site)


def _path_without_console_script(tmp: Path) -> str:
    """This process's PATH minus every directory holding a ``bitnet-crossval`` (the editable
    install's among them), with the build tools still found (symlinked, wherever they were)."""
    tools = tool_only_path(tmp, ["cmake", "ninja", "cc", "c++", "gcc", "g++", "sh", "git"])
    kept = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and not (Path(d) / PROGRAM).exists()]
    return os.pathsep.join([tools, *kept])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory every command runs from: not the repository, no tasks.py."""
    path = tmp_path_factory.mktemp("elsewhere")
    assert not (path / "tasks.py").exists() and not path.is_relative_to(REPO_ROOT)
    return path


@pytest.fixture(scope="module")
def console_env(venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private cache, the venv's bin/ first on PATH, no other ``bitnet-crossval`` on it."""
    tmp = tmp_path_factory.mktemp("console-env")
    cache = tmp / "cache"
    cache.mkdir()
    env = child_env(cache)
    env.pop("PYTHONPATH", None)  # nothing may point back at the checkout
    env["PATH"] = os.pathsep.join([str(venv.root / "bin"), _path_without_console_script(tmp)])
    return env


def run(argv: Sequence[str | Path], *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=WAIT, check=False
    )


def reexec_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[reexec]")]


def test_console_script_runs_the_installed_suite_from_another_directory(
    venv: Venv, console_env: dict[str, str], work: Path
) -> None:
    listed = run([PROGRAM, "--list"], env=console_env, cwd=work)
    assert listed.returncode == 0, listed.stderr
    for name in ("preflight", "setup-cpp-auto", "rebuild"):
        assert name in listed.stdout.split(), listed.stdout

    no_tasks = run([venv.python, "-c", "import tasks"], env=console_env, cwd=work)
    assert no_tasks.returncode != 0
    assert "No module named 'tasks'" in no_tasks.stderr

    as_module = run([venv.python, "-m", "bitnet_crossval", "--list"], env=console_env, cwd=work)
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout == listed.stdout

    # The suite imported is the wheel's, not the checkout's (the editable finder stayed out).
    where = run(
        [venv.python, "-c", "import bitnet_crossval.tasks as t, bitnet_crossval.console as c; print(t.__file__); "
         "print(c.__file__)"],
        env=console_env,
        cwd=work,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    for line in where.stdout.splitlines():
        assert Path(line).is_relative_to(venv.site), line


# --- warm, then repairs that re-exec -----------------------------------------------------------


@pytest.fixture(scope="module")
def warm(console_env: dict[str, str], work: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The module's cache made warm with the console script: ``setup-cpp-auto`` from a fake
    llama.cpp, then ``rebuild`` (the one full shim build of the module); its stderr."""
    source = copy_fake_llama(tmp_path_factory.mktemp("warm") / "fake-llama")
    setup = run([PROGRAM, "setup-cpp-auto", "--backend", "llama", "--source", source], env=console_env, cwd=work)
    assert setup.returncode == 0, setup.stderr
    rebuilt = run([PROGRAM, "rebuild", "--verbose"], env=console_env, cwd=work)
    assert rebuilt.returncode == 0, rebuilt.stderr
    return rebuilt.stderr


def test_warm_preflight_exits_0(venv: Venv, console_env: dict[str, str], work: Path, warm: str) -> None:
    # The shim was compiled from the sources the wheel installed, not from the checkout's..
    assert f"-S {venv.site / 'bitnet_crossval' / 'cpp'} " in warm, warm

    result = run([PROGRAM, "preflight", "--backend", "llama"], env=console_env, cwd=work)

    assert result.returncode == 0, result.stderr
    assert "llama.cpp is available" in result.stderr
    assert "repairing" not in result.stderr and "[reexec]" not in result.stderr


@pytest.fixture
def broken(console_env: dict[str, str], warm: str, tmp_path: Path) -> dict[str, str]:
    """The warm cache without its llama.cpp install, and a fresh fake source to repair it from
    (a new source path, so its build runs in full and reaches the rendezvous; the shim's build
    tree is kept, so the shim is only relinked)."""
    shutil.rmtree(Path(console_env["BITNET_CACHE_DIR"]) / "installs" / "llama", ignore_errors=True)
    source = copy_fake_llama(tmp_path / "fake-llama")
    return {**console_env, "LLAMA_CPP_SOURCE": str(source)}


def test_repair_reexecs_the_console_script_by_exec(venv: Venv, broken: dict[str, str], work: Path) -> None:
    result = run([PROGRAM, *REPAIR, "--json"], env=broken, cwd=work)

    assert result.returncode == 0, result.stderr
    assert "repairing llama.cpp" in result.stderr
    assert reexec_lines(result.stderr) == [
        f"[reexec] exe: {venv.python}",
        "[reexec] exe exists: true",
        f"[reexec] args: {[str(venv.python), str(venv.script), *REPAIR, '--json']!r}",
        "[reexec] Attempting exec()...",
    ]
    assert "(auto-repaired)" in result.stderr  # the re-executed process validated
    document = json.loads(result.stdout)  # only the child printed, and only JSON
    assert document["available"] is True and document["repaired"] is True


@pytest.mark.parametrize("fallback", ["console-script", "python-m"])
def test_repair_falls_back_to_the_console_program_when_exec_is_impossible(
    venv: Venv, broken: dict[str, str], work: Path, tmp_path: Path, fallback: str
) -> None:
    """The launcher the command started from is deleted while the fake build waits: exec would
    start an interpreter that cannot open its script, so the fallback runs the console program:
    ``bitnet-crossval`` when PATH has it, else ``<python> -m bitnet_crossval``."""
    launcher = tmp_path / "launcher" / PROGRAM
    launcher.parent.mkdir()
    shutil.copy2(venv.script, launcher)
    started, release = tmp_path / "started", tmp_path / "release"
    env = {**broken, "FAKE_LLAMA_STARTED": str(started), "FAKE_LLAMA_RELEASE": str(release)}
    if fallback == "console-script":
        expected = [str(venv.script), *REPAIR]
    else:
        env["PATH"] = _path_without_console_script(tmp_path)
        expected = [str(venv.python), "-m", "bitnet_crossval", *REPAIR]

    with subprocess.Popen(
        [str(launcher), *REPAIR], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            wait_for(started, WAIT, proc=proc)
            launcher.unlink()
            release.touch()
            _out, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()

    assert proc.returncode == 0, err
    assert reexec_lines(err) == [
        f"[reexec] exe: {venv.python}",
        "[reexec] exe exists: true",
        f"[reexec] args: {[str(venv.python), str(launcher), *REPAIR]!r}",
        f"[reexec] script missing: {launcher}, skipping exec()",
        "[reexec] Trying invoke fallback...",
        f"[reexec] Fallback command: {expected!r}",
        "[reexec] Fallback child exited with code: 0",
    ]
    assert "(auto-repaired)" in err  # the fallback child validated
