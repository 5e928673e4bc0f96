from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bitnet_crossval.errors import BadInput, BuildFailed
from bitnet_crossval.provision.bitnet_build import (
    KERNEL_HEADER,
    KERNEL_MODEL,
    find_clang,
    prepare_source,
    stage_from_build_tree,
)
from bitnet_crossval.provision.cmake import CMakeProject

# --- find_clang --------------------------------------------------------------------------------


def fake_compiler(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def fake_clang(bin_dir: Path, suffix: str, version: str | None, *, cxx_only: bool = False) -> None:
    body = f'echo "Ubuntu clang version {version} (1ubuntu1)"' if version else 'echo "some other compiler 1.0"'
    fake_compiler(bin_dir, f"clang++{suffix}", body)
    if not cxx_only:
        fake_compiler(bin_dir, f"clang{suffix}", body)


def test_find_clang_takes_a_new_enough_plain_clang(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_clang(bin_dir, "", "19.1.7")
    assert find_clang({"PATH": str(bin_dir)}) == (str(bin_dir / "clang"), str(bin_dir / "clang++"), 19)


def test_find_clang_takes_a_versioned_clang_when_the_plain_one_is_too_old(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_clang(bin_dir, "", "14.0.0")
    fake_clang(bin_dir, "-17", "17.0.6")
    fake_clang(bin_dir, "-18", "18.1.3")
    cc, cxx, major = find_clang({"PATH": str(bin_dir)})
    assert (cc, cxx, major) == (str(bin_dir / "clang-18"), str(bin_dir / "clang++-18"), 18)


def test_find_clang_prefers_the_newest_versioned_clang(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_clang(bin_dir, "-18", "18.1.3")
    fake_clang(bin_dir, "-20", "20.1.0")
    assert find_clang({"PATH": str(bin_dir)})[2] == 20


def test_find_clang_searches_every_directory_of_the_childs_path(tmp_path: Path) -> None:
    fake_clang(tmp_path / "old", "", "15.0.0")
    fake_clang(tmp_path / "llvm19", "-19", "19.0.0")
    path = os.pathsep.join([str(tmp_path / "old"), str(tmp_path / "llvm19")])
    assert find_clang({"PATH": path})[1] == str(tmp_path / "llvm19" / "clang++-19")


def test_only_old_clangs_is_build_failed_naming_them(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_clang(bin_dir, "", "14.0.0")
    fake_clang(bin_dir, "-17", "17.0.6")
    with pytest.raises(BuildFailed) as caught:
        find_clang({"PATH": str(bin_dir)})
    error = caught.value
    assert error.exit_code == 5
    assert "clang >= 18" in error.message
    assert "clang++ 14" in error.message and "clang++-17 17" in error.message
    assert "apt-get install clang-19" in error.next_step


def test_no_clang_at_all_is_build_failed(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    with pytest.raises(BuildFailed) as caught:
        find_clang({"PATH": str(tmp_path / "bin")})
    assert "found only" not in caught.value.message
    assert "apt-get install clang-19" in caught.value.next_step


def test_a_clang_without_its_cxx_partner_or_the_reverse_does_not_count(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_clang(bin_dir, "-19", "19.1.1", cxx_only=True)  # clang++-19 but no clang-19
    fake_compiler(bin_dir, "clang-20", 'echo "clang version 20.0.0"')  # clang-20 but no clang++-20
    with pytest.raises(BuildFailed):
        find_clang({"PATH": str(bin_dir)})


def test_a_compiler_that_fails_or_is_not_clang_is_skipped(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_compiler(bin_dir, "clang", "exit 1")
    fake_compiler(bin_dir, "clang++", "exit 1")  # --version fails
    fake_clang(bin_dir, "-21", None)  # answers, but not as clang
    fake_clang(bin_dir, "-18", "18.0.0")
    assert find_clang({"PATH": str(bin_dir)})[2] == 18


def test_an_unrecognised_version_is_reported_as_0(tmp_path: Path) -> None:
    fake_clang(tmp_path / "bin", "", None)
    with pytest.raises(BuildFailed, match=r"found only clang\+\+ 0"):
        find_clang({"PATH": str(tmp_path / "bin")})


# --- prepare_source ----------------------------------------------------------------------------


@pytest.fixture
def x86(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine="x86_64"))


@pytest.fixture
def arm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine="aarch64"))


# A codegen that writes the header from its arguments (and notes that it ran).
GOOD_CODEGEN = """\
import sys
from pathlib import Path
Path("codegen-ran").write_text(" ".join(sys.argv[1:]))
Path("include").mkdir(exist_ok=True)
Path("include/bitnet-lut-kernels.h").write_text("// generated: " + " ".join(sys.argv[1:]))
"""
FAILING_CODEGEN = """\
import sys
from pathlib import Path
Path("codegen-ran").write_text("failed")
print("codegen: something went wrong")
sys.exit(3)
"""
SILENT_CODEGEN = "from pathlib import Path\nPath('codegen-ran').write_text('wrote nothing')\n"


def bitnet_source(
    root: Path, *, submodule: bool = True, codegen: dict[str, str] | None = None, presets: tuple[str, ...] = ()
) -> Path:
    root.mkdir(parents=True)
    if submodule:
        (root / "3rdparty" / "llama.cpp").mkdir(parents=True)
        (root / "3rdparty" / "llama.cpp" / "CMakeLists.txt").write_text("project(llama)\n")
    for name, text in (codegen or {}).items():
        (root / "utils").mkdir(exist_ok=True)
        (root / "utils" / name).write_text(text)
    for kind in presets:
        preset_dir = root / "preset_kernels" / KERNEL_MODEL
        preset_dir.mkdir(parents=True, exist_ok=True)
        (preset_dir / f"bitnet-lut-kernels-{kind}.h").write_text(f"// preset {kind}\n")
    return root


def test_a_missing_submodule_is_bad_input_with_the_git_command(tmp_path: Path, x86: None) -> None:
    source = bitnet_source(tmp_path / "BitNet", submodule=False, presets=("tl2",))
    with pytest.raises(BadInput) as caught:
        prepare_source(source, {}, tmp_path / "log")
    assert caught.value.exit_code == 6
    assert "3rdparty/llama.cpp" in caught.value.message
    assert "git submodule update --init --recursive" in caught.value.next_step
    assert not (source / KERNEL_HEADER).exists()


def test_an_existing_header_is_left_untouched(tmp_path: Path, x86: None) -> None:
    source = bitnet_source(tmp_path / "BitNet", codegen={"codegen_tl2.py": GOOD_CODEGEN}, presets=("tl2",))
    (source / "include").mkdir()
    (source / KERNEL_HEADER).write_text("// mine, hand-tuned\n")
    prepare_source(source, dict(os.environ), tmp_path / "log")
    assert (source / KERNEL_HEADER).read_text() == "// mine, hand-tuned\n"
    assert not (source / "codegen-ran").exists()


def test_the_codegen_script_writes_the_header(tmp_path: Path, x86: None, capsys: pytest.CaptureFixture[str]) -> None:
    source = bitnet_source(
        tmp_path / "BitNet",
        codegen={"codegen_tl2.py": GOOD_CODEGEN, "codegen_tl1.py": FAILING_CODEGEN},
        presets=("tl2",),
    )
    log = tmp_path / "log"
    prepare_source(source, dict(os.environ), log)
    header = (source / KERNEL_HEADER).read_text()
    assert header.startswith("// generated: ")
    assert f"--model {KERNEL_MODEL}" in header and "--BM" in header and "--BK" in header and "--bm" in header
    assert "codegen_tl2.py" in capsys.readouterr().err
    assert "codegen_tl2.py" in log.read_text()  # the command is logged


def test_arm_runs_the_tl1_codegen(tmp_path: Path, arm: None) -> None:
    source = bitnet_source(
        tmp_path / "BitNet",
        codegen={"codegen_tl1.py": GOOD_CODEGEN, "codegen_tl2.py": FAILING_CODEGEN},
        presets=("tl1", "tl2"),
    )
    prepare_source(source, dict(os.environ), tmp_path / "log")
    assert (source / KERNEL_HEADER).read_text().startswith("// generated: ")


@pytest.mark.parametrize(("machine_fixture", "kind"), [("x86", "tl2"), ("arm", "tl1")])
def test_without_a_codegen_script_the_preset_is_copied(
    tmp_path: Path, request: pytest.FixtureRequest, machine_fixture: str, kind: str
) -> None:
    request.getfixturevalue(machine_fixture)
    source = bitnet_source(tmp_path / "BitNet", presets=("tl1", "tl2"))
    prepare_source(source, dict(os.environ), tmp_path / "log")
    assert (source / KERNEL_HEADER).read_text() == f"// preset {kind}\n"


def test_a_failing_codegen_falls_back_to_the_preset_with_a_warning(
    tmp_path: Path, x86: None, capsys: pytest.CaptureFixture[str]
) -> None:
    source = bitnet_source(tmp_path / "BitNet", codegen={"codegen_tl2.py": FAILING_CODEGEN}, presets=("tl2",))
    log = tmp_path / "log"
    prepare_source(source, dict(os.environ), log)
    assert (source / "codegen-ran").read_text() == "failed"
    assert (source / KERNEL_HEADER).read_text() == "// preset tl2\n"
    err = capsys.readouterr().err
    assert "warning: utils/codegen_tl2.py failed (exit code 3)" in err
    assert "codegen: something went wrong" in log.read_text()


def test_a_codegen_that_writes_nothing_falls_back_to_the_preset(tmp_path: Path, x86: None) -> None:
    source = bitnet_source(tmp_path / "BitNet", codegen={"codegen_tl2.py": SILENT_CODEGEN}, presets=("tl2",))
    prepare_source(source, dict(os.environ), tmp_path / "log")
    assert (source / "codegen-ran").exists()
    assert (source / KERNEL_HEADER).read_text() == "// preset tl2\n"


def test_neither_codegen_nor_preset_is_build_failed(tmp_path: Path, x86: None) -> None:
    source = bitnet_source(tmp_path / "BitNet", codegen={"codegen_tl2.py": FAILING_CODEGEN}, presets=("tl1",))
    log = tmp_path / "log"
    with pytest.raises(BuildFailed) as caught:
        prepare_source(source, dict(os.environ), log)
    error = caught.value
    assert error.exit_code == 5
    assert error.log_path == log
    assert "codegen_tl2.py" in error.message and "bitnet-lut-kernels-tl2.h" in error.message
    assert "microsoft/BitNet checkout" in error.next_step
    assert not (source / KERNEL_HEADER).exists()


# --- stage_from_build_tree -----------------------------------------------------------------------


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def built_tree(tmp_path: Path) -> CMakeProject:
    source = tmp_path / "BitNet"
    llama_cpp = source / "3rdparty" / "llama.cpp"
    write(llama_cpp / "include" / "llama.h", "// llama.h")
    write(llama_cpp / "ggml" / "include" / "ggml.h", "// ggml.h")
    write(llama_cpp / "ggml" / "include" / "ggml-backend.h", "// ggml-backend.h")
    write(llama_cpp / "ggml" / "include" / "notes.txt", "not a header")
    write(source / "include" / "ggml-bitnet.h", "// ggml-bitnet.h")
    write(source / "include" / "bitnet-lut-kernels.h", "// kernels")

    build = tmp_path / "build"
    src = build / "3rdparty" / "llama.cpp" / "src"
    ggml_src = build / "3rdparty" / "llama.cpp" / "ggml" / "src"
    write(src / "libllama.so", "libllama")
    write(ggml_src / "libggml.so.0.0.1", "libggml")
    (ggml_src / "libggml.so.0").symlink_to("libggml.so.0.0.1")
    (ggml_src / "libggml.so").symlink_to("libggml.so.0")
    write(ggml_src / "libggml-base.so", "libggml-base")
    write(src / "libllama.a", "static: not staged")
    write(src / "libcommon.so", "not a library the reference loads")
    write(build / "CMakeFiles" / "3.28" / "CompilerIdC" / "libggml-probe.so", "cmake's own")
    write(ggml_src / "CMakeFiles" / "ggml.dir" / "libggml.so.tmp", "half-linked")
    write(build / "bin" / "libllama.so", "a second libllama, found later")
    return CMakeProject(source_dir=source, build_dir=build, env={})


def test_stage_copies_libraries_and_keeps_symlinks(tmp_path: Path, built_tree: CMakeProject) -> None:
    staging, log = tmp_path / "staging", tmp_path / "log"
    stage_from_build_tree(built_tree, staging, log)
    lib = staging / "lib"
    assert sorted(p.name for p in lib.iterdir()) == [
        "libggml-base.so",
        "libggml.so",
        "libggml.so.0",
        "libggml.so.0.0.1",
        "libllama.so",
    ]
    assert os.readlink(lib / "libggml.so") == "libggml.so.0"
    assert os.readlink(lib / "libggml.so.0") == "libggml.so.0.0.1"
    assert (lib / "libggml.so").read_text() == "libggml"  # the chain resolves inside lib/
    assert (lib / "libllama.so").read_text() in {"libllama", "a second libllama, found later"}
    assert "staged 5 libraries" in log.read_text()


def test_stage_copies_the_public_headers(tmp_path: Path, built_tree: CMakeProject) -> None:
    staging = tmp_path / "staging"
    stage_from_build_tree(built_tree, staging, tmp_path / "log")
    include = staging / "include"
    assert sorted(p.name for p in include.iterdir()) == [
        "bitnet-lut-kernels.h",
        "ggml-backend.h",
        "ggml-bitnet.h",
        "ggml.h",
        "llama.h",
    ]
    assert (include / "llama.h").read_text() == "// llama.h"


def test_stage_from_a_tree_without_libraries_stages_nothing(tmp_path: Path) -> None:
    project = CMakeProject(source_dir=tmp_path / "src", build_dir=tmp_path / "build", env={})
    (tmp_path / "build").mkdir()
    stage_from_build_tree(project, tmp_path / "staging", tmp_path / "log")
    assert list((tmp_path / "staging" / "lib").iterdir()) == []
    assert list((tmp_path / "staging" / "include").iterdir()) == []
    assert "staged 0 libraries" in (tmp_path / "log").read_text()
