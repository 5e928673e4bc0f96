from __future__ import annotations

import re

import pytest

from bitnet_crossval.backends.specs import BACKEND_NAMES, BITNET, LLAMA, SPECS, spec_for
from bitnet_crossval.errors import BadInput

HEX40 = re.compile(r"[0-9a-f]{40}")


@pytest.mark.parametrize(
    ("name", "display", "dir_env"),
    [("llama", "llama.cpp", "LLAMA_CPP_DIR"), ("bitnet", "bitnet.cpp", "BITNET_CPP_DIR")],
)
def test_spec_for_known_names(name: str, display: str, dir_env: str) -> None:
    spec = spec_for(name)
    assert spec.name == name
    assert spec.display == display
    assert spec.dir_env == dir_env


@pytest.mark.parametrize("name", ["", "Llama", "LLAMA", "llama.cpp", "bitnet.cpp", " llama", "all", "ggml"])
def test_unknown_names_are_bad_input_listing_the_choices(name: str) -> None:
    with pytest.raises(BadInput) as caught:
        spec_for(name)
    assert caught.value.exit_code == 6
    assert repr(name) in caught.value.message
    assert "llama" in caught.value.next_step and "bitnet" in caught.value.next_step


def test_every_listed_name_has_a_spec() -> None:
    assert set(BACKEND_NAMES) == set(SPECS)
    for name in BACKEND_NAMES:
        assert spec_for(name) is SPECS[name]


@pytest.mark.parametrize("spec", [LLAMA, BITNET], ids=lambda s: s.name)
def test_pinned_commits_are_full_lowercase_hashes(spec) -> None:
    assert HEX40.fullmatch(spec.commit), spec.commit


@pytest.mark.parametrize("spec", [LLAMA, BITNET], ids=lambda s: s.name)
def test_default_source_is_the_repository_at_the_pinned_commit(spec) -> None:
    url, _, commit = spec.default_source.rpartition("@")
    assert url == spec.git_url and url.startswith("https://")
    assert commit == spec.commit


def test_the_environment_variables_are_distinct() -> None:
    names = [v for spec in SPECS.values() for v in (spec.dir_env, spec.source_env)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("spec", [LLAMA, BITNET], ids=lambda s: s.name)
def test_llama_and_ggml_are_required_and_loaded_last_by_dependants(spec) -> None:
    assert "llama" in spec.libraries and "ggml" in spec.libraries
    # A dependency is loaded before its dependants: libllama links libggml.
    assert spec.libraries.index("ggml") < spec.libraries.index("llama")


def test_only_bitnet_demands_the_i2_s_quantiser() -> None:
    def symbols(spec) -> set[str]:
        return {name for group in spec.required_symbols for name in group}

    assert "quantize_i2_s" in symbols(BITNET)
    assert "quantize_i2_s" not in symbols(LLAMA)
    # Either generation of the model-loading API is accepted.
    assert ("llama_model_load_from_file", "llama_load_model_from_file") in LLAMA.required_symbols


def test_only_llama_falls_back_to_pypi() -> None:
    assert LLAMA.pypi_fallback is True
    assert BITNET.pypi_fallback is False
