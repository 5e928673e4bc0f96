"""The C++ reference backends the suite knows: what they are called, where they come from,
and what a usable build of each must contain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.options import Choice

BackendName = Literal["llama", "bitnet"]
BACKEND_NAMES: tuple[BackendName, ...] = ("llama", "bitnet")

BACKEND: Choice[BackendName] = Choice(
    name="backend", help="the C++ reference backend", choices=BACKEND_NAMES, default="llama"
)

LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
LLAMA_CPP_GIT_URL = "https://github.com/ggml-org/llama.cpp"
LLAMA_CPP_PYPI_PACKAGE = "llama-cpp-python"
LLAMA_CPP_PYPI_VERSION = "0.3.36"
LLAMA_CPP_PYPI_SUBDIR = "vendor/llama.cpp"

BITNET_CPP_COMMIT = "16da220ae2b510caff437d403288882687f44ae5"
BITNET_CPP_GIT_URL = "https://github.com/microsoft/BitNet"


# The C API the shim needs, in either generation of its names.
_LLAMA_API_SYMBOLS: tuple[tuple[str, ...], ...] = (
    ("llama_backend_init",),
    ("llama_model_load_from_file", "llama_load_model_from_file"),
    ("llama_decode",),
    ("llama_get_logits_ith",),
    ("llama_batch_init",),
    ("llama_tokenize",),
)


@dataclass(frozen=True, kw_only=True)
class BackendSpec:
    name: BackendName
    display: str
    dir_env: str
    source_env: str
    git_url: str
    commit: str
    # Libraries detection looks for, in load order (a dependency before its dependants);
    # ggml-base and ggml-cpu exist only in newer trees, llama and ggml always.
    libraries: tuple[str, ...]
    # C symbols that prove the libraries are this backend; each inner tuple means "any of".
    required_symbols: tuple[tuple[str, ...], ...]
    pypi_fallback: bool

    @property
    def default_source(self) -> str:
        return f"{self.git_url}@{self.commit}"


LLAMA = BackendSpec(
    name="llama",
    display="llama.cpp",
    dir_env="LLAMA_CPP_DIR",
    source_env="LLAMA_CPP_SOURCE",
    git_url=LLAMA_CPP_GIT_URL,
    commit=LLAMA_CPP_COMMIT,
    libraries=("ggml-base", "ggml-cpu", "ggml", "llama"),
    required_symbols=_LLAMA_API_SYMBOLS,
    pypi_fallback=True,
)

# bitnet.cpp builds libllama and libggml with its kernels inside libggml; there is no
# libbitnet. What marks a BitNet build is ggml exporting the I2_S quantiser.
BITNET = BackendSpec(
    name="bitnet",
    display="bitnet.cpp",
    dir_env="BITNET_CPP_DIR",
    source_env="BITNET_CPP_SOURCE",
    git_url=BITNET_CPP_GIT_URL,
    commit=BITNET_CPP_COMMIT,
    libraries=("ggml-base", "ggml-cpu", "ggml", "llama"),
    required_symbols=(*_LLAMA_API_SYMBOLS, ("quantize_i2_s",)),
    pypi_fallback=False,
)

SPECS: dict[BackendName, BackendSpec] = {"llama": LLAMA, "bitnet": BITNET}


def spec_for(name: str) -> BackendSpec:
    """The backend called ``name``; anything else is bad input naming the choices."""
    for spec in SPECS.values():
        if spec.name == name:
            return spec
    raise BadInput(f"unknown backend {name!r}", next_step=f"use one of: {', '.join(BACKEND_NAMES)}")
