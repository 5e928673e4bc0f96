"""The fake reference set up as the suite finds a real one: the fake shim (``fake_shim.py``)
installed as an executable, its server running, and a cache whose constants file records the
script as the ``llama`` backend's shim, with the synthetic models' vocabulary under
``<cache>/sources``."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.context import SuiteContext, load_context
from bitnet_crossval.reference.sources import shim_source_digest
from bitnet_crossval.store.constants import BackendRecord, write_constants
from bitnet_crossval.store.layout import CONSTANTS_ENV, CacheLayout
from bitnet_crossval.util.files import file_sha256
from tests.conftest import child_env
from tests.unit.crossval import fake_shim

VOCABULARY = Path("sources") / "fake-llama" / "models" / "ggml-vocab-llama-spm.gguf"


@dataclass(frozen=True)
class FakeShim:
    script: Path
    socket: Path
    server_log: Path
    """The server's stderr: a bug of the fake shows its traceback here."""


def install_fake_shim(directory: Path) -> Path:
    """``directory/bitnet-shim``: the fake's executable, run by this interpreter."""
    script = directory / "bitnet-shim"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(fake_shim.client_script(sys.executable), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@contextmanager
def fake_shim_server(socket_path: Path, log: Path) -> Iterator[subprocess.Popen[str]]:
    """The fake shim's server, stopped on exit; ready when it says so (it is listening then)."""
    # One BLAS thread, as the shim runs with --threads 1: OpenBLAS's threads spin while they wait,
    # which on a busy 2-core machine made each forward pass ten times slower.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w", encoding="utf-8") as err:
        server = subprocess.Popen(
            [sys.executable, fake_shim.__file__, fake_shim.SERVE_COMMAND, str(socket_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if line.strip() != fake_shim.READY_LINE:
            raise RuntimeError(f"the fake shim's server did not start: {line!r}\n{log.read_text()}")
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def fake_record(script: Path, *, sha256: str | None = None) -> BackendRecord:
    """The constants file's record of a ``llama`` backend whose shim is ``script``, as a rebuild
    writes it (so ``reference.lookup.recorded_shim`` accepts it)."""
    return BackendRecord(
        available=True,
        origin="cache",
        source={"kind": "fake", "commit": fake_shim.BACKEND_COMMIT},
        shim=str(script),
        shim_api=fake_shim.API,
        shim_sha256=sha256 if sha256 is not None else file_sha256(script),
        shim_source=shim_source_digest(),
    )


@dataclass(frozen=True)
class FakeCache:
    """A cache whose constants record the fake shim; contexts on it reach the fake's server."""

    root: Path
    shim: FakeShim

    @property
    def layout(self) -> CacheLayout:
        return CacheLayout(self.root)

    def env(self, **extra: str) -> dict[str, str]:
        env = child_env(self.root)
        env[fake_shim.SOCKET_ENV] = str(self.shim.socket)
        env.update(extra)
        return env

    def context(self, **extra: str) -> SuiteContext:
        """A context as a command builds it; ``extra`` adds variables (``FAKE_SHIM_MISBEHAVE``...)."""
        return load_context(self.env(**extra))

    def with_constants(self, directory: Path, record: BackendRecord) -> SuiteContext:
        """A context on this cache whose constants file (``BITNET_CONSTANTS_FILE``) holds ``record``."""
        path = directory / "constants.json"
        write_constants(path, {"llama": record})
        return self.context(**{CONSTANTS_ENV: str(path)})


def make_fake_cache(root: Path, shim: FakeShim, vocabulary: Path) -> FakeCache:
    target = root / VOCABULARY
    target.parent.mkdir(parents=True)
    shutil.copyfile(vocabulary, target)
    write_constants(CacheLayout(root).constants_file, {"llama": fake_record(shim.script)})
    return FakeCache(root=root, shim=shim)
