"""How the shim's failures reach the caller: bad models and inputs, and paths that are not regular files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.build import ShimBuild
from bitnet_crossval.reference.client import Shim
from tests.gguf_models import write_unknown_architecture_model
from tests.integration.reference.conftest import run_shim

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_missing_model_is_bad_input(shim: Shim, work: Path) -> None:
    with pytest.raises(BadInput) as caught:
        shim.info(work / "no-such-model.gguf")
    assert caught.value.exit_code == 6
    assert "not found" in caught.value.message


@pytest.fixture
def random_bytes_model(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    yield path


def test_corrupt_model_is_bad_input(shim: Shim, random_bytes_model: Path) -> None:
    with pytest.raises(BadInput) as caught:
        shim.logits(random_bytes_model, [1, 2, 3])
    assert caught.value.exit_code == 6


def test_truncated_gguf_is_bad_input(shim: Shim, tiny_model: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(BadInput) as caught:
        shim.logits(truncated, [1, 2, 3])
    assert caught.value.exit_code == 6


def test_unknown_architecture_is_bad_input(shim: Shim, tmp_path: Path) -> None:
    model = write_unknown_architecture_model(tmp_path / "unknown.gguf")
    with pytest.raises(BadInput) as caught:
        shim.info(model)
    assert "architecture" in caught.value.message


def test_token_outside_the_vocabulary_is_bad_input(shim: Shim, tiny_model: Path) -> None:
    with pytest.raises(BadInput) as caught:
        shim.logits(tiny_model, [1, 100_000])
    assert "outside the vocabulary" in caught.value.message


# ----- paths that are not regular files ---------------------------------------------------------


@pytest.fixture
def nodes(tmp_path: Path) -> dict[str, Path]:
    """Real non-regular files: a FIFO, /dev/null's and /dev/full's device numbers, a directory,
    a socket (the tests run as root, so mknod works)."""
    import socket

    root = tmp_path / "nodes"
    root.mkdir()
    made = {
        "fifo": root / "fifo",
        "null": root / "null",
        "full": root / "full",
        "directory": root / "directory",
        "socket": root / "socket",
    }
    os.mkfifo(made["fifo"])
    os.mknod(made["null"], 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(made["full"], 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    made["directory"].mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(made["socket"]))
    server.close()
    return made


KINDS = {
    "fifo": "a FIFO",
    "null": "a character device",
    "full": "a character device",
    "directory": "a directory",
    "socket": "a socket",
}


def _unchanged(path: Path, kind: str) -> bool:
    mode = path.lstat().st_mode
    check = {"fifo": stat.S_ISFIFO, "null": stat.S_ISCHR, "full": stat.S_ISCHR, "directory": stat.S_ISDIR}
    return check.get(kind, stat.S_ISSOCK)(mode)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_outputs_that_are_not_regular_files_are_refused_with_exit_2(
    current_build: ShimBuild, tiny_model: Path, nodes: dict[str, Path], shim_env: dict[str, str], kind: str
) -> None:
    target = nodes[kind]
    for args in (
        ["logits", "--model", str(tiny_model), "--tokens", "1,2", "--out", str(target)],
        ["generate", "--model", str(tiny_model), "--tokens", "1", "--n", "2", "--out-logits", str(target)],
        ["quantize", "--model", str(tiny_model), "--out", str(target), "--type", "Q8_0"],
        ["info", "--log-file", str(target)],
    ):
        result = run_shim(current_build.executable, *args, env=shim_env)
        assert result.returncode == 2, args
        (line,) = result.stderr.splitlines()
        assert f"{target} exists and is {KINDS[kind]}, not a regular file; refusing to write to it" in line
        assert _unchanged(target, kind)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(nodes)  # no temporary left beside it
    if kind == "directory":
        assert list(target.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "null", "full", "socket"])
def test_a_trace_directory_that_is_a_node_is_refused(
    current_build: ShimBuild, tiny_model: Path, nodes: dict[str, Path], shim_env: dict[str, str], kind: str
) -> None:
    target = nodes[kind]
    result = run_shim(
        current_build.executable, "trace", "--model", str(tiny_model), "--tokens", "1,2", "--out-dir", str(target),
        env=shim_env,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"exists and is {KINDS[kind]}, not a directory" in result.stderr
    assert _unchanged(target, kind)


@pytest.mark.parametrize("kind", ["fifo", "null", "directory"])
def test_inputs_that_are_not_regular_files_are_refused_without_blocking(
    current_build: ShimBuild, tiny_model: Path, nodes: dict[str, Path], shim_env: dict[str, str], kind: str
) -> None:
    source = nodes[kind]
    model = str(tiny_model)
    quantized = str(source.parent / "q.gguf")
    cases = [
        (["logits", "--model", model, "--tokens-file", str(source), "--out", "x.npy"], 2, "tokens file"),
        (["tokenize", "--model", model, "--text-file", str(source), "--add-bos", "1", "--parse-special", "0"],
         2, "text file"),
        (["info", "--model", str(source)], 3, "model file"),
        (["quantize", "--model", str(source), "--out", quantized, "--type", "Q8_0"], 3, "model file"),
    ]  # fmt: skip
    for args, code, what in cases:
        result = run_shim(current_build.executable, *args, env=shim_env)  # a FIFO would block: run_shim's bound
        assert result.returncode == code, args
        assert f"{what} {source} is {KINDS[kind]}, not a regular file" in result.stderr


def test_the_client_maps_a_refused_output_to_bad_input(shim: Shim, tiny_model: Path, nodes: dict[str, Path]) -> None:
    with pytest.raises(BadInput) as caught:
        shim.quantize(tiny_model, nodes["full"], "Q8_0")
    assert "refusing to write" in caught.value.message
    assert "regular file" in caught.value.next_step
    with pytest.raises(BadInput, match=r"model file .* is a FIFO"):
        shim.logits(nodes["fifo"], [1, 2])
