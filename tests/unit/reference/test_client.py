"""bitnet_crossval.reference.shim without C++: a fake ``bitnet-shim`` (a small Python script) for the client, and a
fake ``cmake`` behind tasks.proc.run for build_shim."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.errors import (
    BackendUnavailable,
    BadInput,
    BuildFailed,
    CommandFailed,
    SuiteError,
    UnclassifiedError,
)
from bitnet_crossval.reference import build as shim_build
from bitnet_crossval.reference import client as shim
from bitnet_crossval.reference.build import build_shim
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.util import proc, ui

FAKE_SHIM = """\
import json, os, signal, sys

plan = json.load(open(os.environ["FAKE_SHIM_PLAN"]))
argv = sys.argv[1:]
files = {}
for flag in ("--tokens-file", "--text-file"):
    if flag in argv:
        with open(argv[argv.index(flag) + 1], "rb") as handle:
            files[flag] = handle.read().hex()
with open(os.environ["FAKE_SHIM_RECORD"], "a") as handle:
    handle.write(json.dumps({"argv": argv, "files": files}) + "\\n")
if plan.get("npy_shape"):
    import numpy
    out = argv[argv.index("--out" if "--out" in argv else "--out-logits") + 1]
    rows, cols = plan["npy_shape"]
    numpy.save(out, numpy.arange(rows * cols, dtype=numpy.float32).reshape(rows, cols))
if plan.get("signal"):
    os.kill(os.getpid(), plan["signal"])
sys.stdout.write(plan.get("stdout", ""))
sys.stderr.write(plan.get("stderr", ""))
sys.exit(plan.get("exit", 0))
"""

Plan = Callable[..., Shim]


@pytest.fixture
def fake_shim(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "bitnet-shim"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\n{FAKE_SHIM}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def plan(fake_shim: Path, tmp_path: Path) -> Plan:
    """Configure what the fake shim does next; returns a client for it."""

    def configure(*, log_dir: Path | None = None, **behaviour: Any) -> Shim:
        plan_path = tmp_path / "plan.json"
        plan_path.write_text(json.dumps(behaviour), encoding="utf-8")
        env = dict(os.environ)
        env["FAKE_SHIM_PLAN"] = str(plan_path)
        env["FAKE_SHIM_RECORD"] = str(tmp_path / "record.jsonl")
        return Shim(fake_shim, env=env, log_dir=log_dir)

    return configure


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]


def option(argv: Sequence[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ----- argument building -------------------------------------------------------------------------


def test_tokenize_passes_explicit_flags_and_utf8_text(plan: Plan, tmp_path: Path) -> None:
    text = "héllo 🙂"
    client = plan(stdout=json.dumps({"tokens": [1, 7], "pieces_hex": ["3c733e", "f09f"]}))
    result = client.tokenize(Path("m.gguf"), text, add_bos=True, parse_special=False)

    (call,) = calls(tmp_path)
    argv = call["argv"]
    assert argv[0] == "tokenize"
    assert option(argv, "--model") == "m.gguf"
    assert (option(argv, "--add-bos"), option(argv, "--parse-special")) == ("1", "0")
    assert bytes.fromhex(call["files"]["--text-file"]) == text.encode("utf-8")
    assert result.tokens == (1, 7)
    assert result.pieces == (b"<s>", b"\xf0\x9f")  # a partial character survives as bytes


def test_detokenize_sends_token_file_and_decodes_hex_text(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"text_hex": "68c3a9f0", "pieces_hex": ["68", "c3a9", "f0"]}))
    result = client.detokenize(Path("m.gguf"), [5, 6, 7], remove_special=True)

    (call,) = calls(tmp_path)
    assert json.loads(bytes.fromhex(call["files"]["--tokens-file"])) == [5, 6, 7]
    assert (option(call["argv"], "--remove-special"), option(call["argv"], "--unparse-special")) == ("1", "0")
    assert result.text_bytes == b"h\xc3\xa9\xf0"
    assert result.text == "hé\ufffd"


def test_logits_passes_run_settings_and_reads_the_array(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 5, "kv_type": "f16"}), npy_shape=[3, 5])
    logits, meta = client.logits(Path("m.gguf"), [1, 2, 3], threads=4, kv_type="f16")

    (call,) = calls(tmp_path)
    argv = call["argv"]
    assert argv[0] == "logits"
    assert (option(argv, "--threads"), option(argv, "--kv-type")) == ("4", "f16")
    assert json.loads(bytes.fromhex(call["files"]["--tokens-file"])) == [1, 2, 3]
    assert logits.shape == (3, 5)
    assert logits.dtype == np.float32
    assert logits[2, 4] == 14.0
    assert meta["kv_type"] == "f16"
    assert not Path(option(argv, "--out")).exists(), "without out_dir no file is kept"


def test_logits_defaults_are_one_thread_and_f32_kv(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 2}), npy_shape=[1, 2])
    client.logits(Path("m.gguf"), [1])
    argv = calls(tmp_path)[0]["argv"]
    assert (option(argv, "--threads"), option(argv, "--kv-type")) == ("1", "f32")


def test_logits_with_out_dir_memory_maps_a_kept_file(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 4}), npy_shape=[2, 4])
    logits, _ = client.logits(Path("m.gguf"), [1, 2], out_dir=tmp_path / "arrays")
    assert isinstance(logits, np.memmap)
    out = Path(option(calls(tmp_path)[0]["argv"], "--out"))
    assert out.parent == tmp_path / "arrays"
    assert out.exists()


def test_logits_of_the_wrong_shape_are_rejected(plan: Plan) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 5}), npy_shape=[2, 5])
    with pytest.raises(UnclassifiedError, match="shape"):
        client.logits(Path("m.gguf"), [1, 2, 3])


def test_generate_passes_n_and_returns_tokens_with_logits(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"tokens": [4, 4], "n_vocab": 3}), npy_shape=[2, 3])
    generation = client.generate(Path("m.gguf"), [1], n=2)
    argv = calls(tmp_path)[0]["argv"]
    assert argv[0] == "generate"
    assert option(argv, "--n") == "2"
    assert "--out-logits" in argv
    assert generation.tokens == (4, 4)
    assert generation.logits.shape == (2, 3)


def test_info_without_model_asks_only_for_build_facts(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"api": "legacy"}))
    assert client.info()["api"] == "legacy"
    client.info(Path("m.gguf"))
    client.info(Path("m.gguf"), load_weights=True)
    argvs = [c["argv"] for c in calls(tmp_path)]
    assert argvs[0] == ["info"]
    assert argvs[1] == ["info", "--model", "m.gguf", "--weights", "0"]
    assert argvs[2][-1] == "1"


def test_log_dir_adds_a_log_file_per_command(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout="{}", log_dir=tmp_path / "logs")
    client.info()
    argv = calls(tmp_path)[0]["argv"]
    assert option(argv, "--log-file") == str(tmp_path / "logs" / "shim-info.log")


def test_verbose_mode_asks_for_llama_cpp_log_when_no_log_dir(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui, "_verbose", True)
    plan(stdout="{}").info()
    plan(stdout="{}", log_dir=tmp_path / "logs").info()
    first, second = (c["argv"] for c in calls(tmp_path))
    assert "--verbose" in first
    assert "--verbose" not in second  # the log file already keeps it


def test_json_is_found_after_stray_output(plan: Plan) -> None:
    client = plan(stdout='ggml noise\n{"api": "current"}\n')
    assert client.info() == {"api": "current"}


# ----- exit-code mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "contract_exit"),
    [
        (shim.EXIT_USAGE, BadInput, 6),
        (shim.EXIT_MODEL, BadInput, 6),
        (shim.EXIT_UNSUPPORTED, BadInput, 6),
        (shim.EXIT_DECODE, UnclassifiedError, 1),
        (shim.EXIT_OTHER, UnclassifiedError, 1),
        (7, UnclassifiedError, 1),
    ],
)
def test_exit_codes_map_to_suite_errors(
    plan: Plan, tmp_path: Path, code: int, error: type[SuiteError], contract_exit: int
) -> None:
    client = plan(exit=code, stderr="bitnet-shim: error: the precise reason\n", log_dir=tmp_path / "logs")
    with pytest.raises(error) as caught:
        client.info(Path("m.gguf"))
    assert type(caught.value) is error
    assert caught.value.exit_code == contract_exit
    assert "the precise reason" in caught.value.message
    assert caught.value.log_path == tmp_path / "logs" / "shim-info.log"


def test_a_shim_killed_by_a_signal_is_unclassified(plan: Plan) -> None:
    client = plan(signal=9)
    with pytest.raises(UnclassifiedError, match="signal 9"):
        client.info()


def test_success_without_a_json_document_is_unclassified(plan: Plan) -> None:
    client = plan(stdout="not json\n")
    with pytest.raises(UnclassifiedError, match="no JSON document"):
        client.info()


def test_a_missing_executable_says_to_rebuild(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        Shim(tmp_path / "nowhere" / "bitnet-shim").info()
    assert "invoke rebuild" in caught.value.next_step


# ----- build_shim with a fake cmake --------------------------------------------------------------


@pytest.fixture
def backend_prefix(tmp_path: Path) -> Path:
    prefix = tmp_path / "prefix"
    (prefix / "include").mkdir(parents=True)
    (prefix / "include" / "llama.h").write_text("/* stand-in */\n")
    (prefix / "lib").mkdir()
    return prefix


class FakeCmake:
    """Stands in for cmake behind tasks.proc.run; everything else runs for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, shim_script: Path, *, cache_api: str = "current") -> None:
        self.calls: list[list[str]] = []
        self.fail: str | None = None
        self.cache_api = cache_api
        self._shim_script = shim_script
        self._real_run = proc.run
        monkeypatch.setattr(proc, "run", self.run)

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> proc.Completed:
        args = [os.fspath(a) for a in argv]
        if args[0] != "cmake":
            return self._real_run(args, **kwargs)
        self.calls.append(args)
        step = "build" if args[1] == "--build" else "configure"
        if self.fail == step:
            raise CommandFailed(args, 1, "boom", log_path=kwargs.get("log_path"))
        build_dir = Path(args[args.index("-B") + 1] if step == "configure" else args[2])
        if step == "configure":
            build_dir.mkdir(parents=True, exist_ok=True)
            (build_dir / "CMakeCache.txt").write_text(
                f"CMAKE_GENERATOR:INTERNAL=Ninja\nBITNET_SHIM_API:INTERNAL={self.cache_api}\n"
            )
        else:
            target = build_dir / shim_build.EXECUTABLE_NAME
            target.write_bytes(self._shim_script.read_bytes())
            target.chmod(0o755)
        return proc.Completed(argv=args, returncode=0, output="")


def _build(prefix: Path, tmp_path: Path, env: Mapping[str, str]) -> shim_build.ShimBuild:
    return build_shim(
        include_dirs=[prefix / "include"],
        lib_dir=prefix / "lib",
        build_dir=tmp_path / "build",
        log_path=tmp_path / "build.log",
        env=env,
        backend="llama",
        backend_commit="abc123",
        build_flags="-DX=1",
    )


@pytest.fixture
def ninja_env(tmp_path: Path, fake_shim: Path) -> dict[str, str]:
    """PATH with a `ninja`, so the generator choice is stable; the fake shim answers `info`."""
    bin_dir = tmp_path / "ninja-bin"
    bin_dir.mkdir()
    (bin_dir / "ninja").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "ninja").chmod(0o755)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"stdout": json.dumps({"api": "current"})}))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["FAKE_SHIM_PLAN"] = str(plan_path)
    env["FAKE_SHIM_RECORD"] = str(tmp_path / "record.jsonl")
    return env


def test_build_configures_once_and_then_only_builds(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    first = _build(backend_prefix, tmp_path, ninja_env)
    second = _build(backend_prefix, tmp_path, ninja_env)

    assert first == second
    assert first.api == "current"
    assert first.executable == tmp_path / "build" / shim_build.EXECUTABLE_NAME
    steps = ["configure" if "-S" in c else "build" for c in cmake.calls]
    assert steps == ["configure", "build", "build"]
    configure = cmake.calls[0]
    assert option(configure, "-G") == "Ninja"
    assert f"-DSHIM_INCLUDE_DIRS={backend_prefix / 'include'}" in configure
    assert f"-DSHIM_LIB_DIR={backend_prefix / 'lib'}" in configure
    assert "-DSHIM_BACKEND_COMMIT=abc123" in configure
    assert "-DSHIM_BUILD_FLAGS=-DX=1" in configure


def test_changed_inputs_configure_again(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    _build(backend_prefix, tmp_path, ninja_env)
    build_shim(
        include_dirs=[backend_prefix / "include"],
        lib_dir=backend_prefix / "lib",
        build_dir=tmp_path / "build",
        log_path=tmp_path / "build.log",
        env=ninja_env,
        backend="llama",
        backend_commit="def456",
        build_flags="-DX=1",
    )
    assert sum("-S" in c for c in cmake.calls) == 2


@pytest.mark.parametrize("step", ["configure", "build"])
def test_cmake_failures_are_build_failures_with_the_log(
    monkeypatch: pytest.MonkeyPatch,
    backend_prefix: Path,
    tmp_path: Path,
    fake_shim: Path,
    ninja_env: dict[str, str],
    step: str,
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    cmake.fail = step
    with pytest.raises(BuildFailed) as caught:
        _build(backend_prefix, tmp_path, ninja_env)
    assert caught.value.exit_code == 5
    assert caught.value.log_path == tmp_path / "build.log"
    assert ("configuring" if step == "configure" else "compiling") in caught.value.message


def test_a_failed_configure_is_run_again_next_time(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    cmake.fail = "configure"
    with pytest.raises(BuildFailed):
        _build(backend_prefix, tmp_path, ninja_env)
    cmake.fail = None
    assert _build(backend_prefix, tmp_path, ninja_env).api == "current"
    assert sum("-S" in c for c in cmake.calls) == 2


def test_missing_llama_h_fails_before_cmake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    empty = tmp_path / "empty"
    (empty / "include").mkdir(parents=True)
    (empty / "lib").mkdir()
    with pytest.raises(BuildFailed, match=r"llama\.h was not found"):
        _build(empty, tmp_path, ninja_env)
    assert cmake.calls == []


def test_api_disagreement_between_cache_and_binary_fails(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    FakeCmake(monkeypatch, fake_shim, cache_api="legacy")  # the fake binary says "current"
    with pytest.raises(BuildFailed, match="reports API"):
        _build(backend_prefix, tmp_path, ninja_env)


def test_a_build_dir_of_another_generator_starts_over(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "CMakeCache.txt").write_text("CMAKE_GENERATOR:INTERNAL=Unix Makefiles\n")
    (build_dir / "stale-object.o").write_text("")
    FakeCmake(monkeypatch, fake_shim)
    _build(backend_prefix, tmp_path, ninja_env)
    assert not (build_dir / "stale-object.o").exists()
