"""The outputs of crossval-per-token are kept apart from its inputs, from each other and from what
the suite owns: the same file by path, through links, or by inode (a hard link)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitnet_crossval.context import load_context
from bitnet_crossval.crossval.models import parse_model
from bitnet_crossval.crossval.outputs import Protected, check_outputs_apart, protected_paths
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.constants import BackendRecord, write_constants


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def inputs(model: Path) -> list[Protected]:
    return [Protected(path=model, what="the model (--model)", read_by_run=True)]


def test_outputs_apart_from_everything_pass(tmp_path: Path, model: Path) -> None:
    check_outputs_apart({"--report": tmp_path / "r.json", "--junit": tmp_path / "j.xml"}, inputs(model))


def test_an_output_that_is_the_model_is_refused(tmp_path: Path, model: Path) -> None:
    with pytest.raises(BadInput) as caught:
        check_outputs_apart({"--report": model}, inputs(model))
    assert caught.value.message == (
        f"--report {model} is the model (--model), which the run reads, and writing there would replace it"
    )
    assert caught.value.next_step == "name another file for --report"


def test_a_hard_link_of_an_input_is_the_same_file(tmp_path: Path, model: Path) -> None:
    link = tmp_path / "other-name.gguf"
    os.link(model, link)
    with pytest.raises(BadInput, match="is the model"):
        check_outputs_apart({"--report": link}, inputs(model))


def test_an_input_reached_through_a_linked_directory_is_the_same_file(tmp_path: Path, model: Path) -> None:
    (tmp_path / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BadInput, match="is the model"):
        check_outputs_apart({"--plot": tmp_path / "elsewhere" / model.name}, inputs(model))
    with pytest.raises(BadInput, match="is the model"):
        check_outputs_apart({"--plot": tmp_path / "sub" / ".." / model.name}, inputs(model))


def test_two_outputs_on_one_file_are_refused_whether_it_exists_or_not(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as caught:
        check_outputs_apart({"--report": tmp_path / "x", "--plot": tmp_path / "x"}, [])
    assert caught.value.message == f"--report and --plot name the same file {tmp_path / 'x'}"
    (tmp_path / "y").write_text("{}")
    os.link(tmp_path / "y", tmp_path / "z")
    with pytest.raises(BadInput, match="--report and --junit name the same file"):
        check_outputs_apart({"--report": tmp_path / "y", "--junit": tmp_path / "z"}, [])


def test_protected_paths_name_the_inputs_the_cache_the_constants_and_the_shim(tmp_path: Path, model: Path) -> None:
    cache = tmp_path / "cache"
    constants = tmp_path / "elsewhere" / "constants.json"
    shim = tmp_path / "shims" / "bitnet-shim"
    shim.parent.mkdir()
    shim.write_bytes(b"\x7fELF")
    constants.parent.mkdir()
    write_constants(constants, {"llama": BackendRecord(available=True, shim=str(shim), lib_dir=str(tmp_path / "lib"))})
    ctx = load_context({"BITNET_CACHE_DIR": str(cache), "BITNET_CONSTANTS_FILE": str(constants)})
    tokens = tmp_path / "ids.txt"
    request = CrossvalRequest(model=parse_model(str(model)), tokens_file=tokens, tokenizer=tmp_path / "tok.json")
    protected = protected_paths(request, ctx)
    cases = {
        model: "is the model (--model), which the run reads",
        tokens: "is the tokens file (--tokens-file), which the run reads",
        tmp_path / "tok.json": "is the tokenizer (--tokenizer), which the run reads",
        constants: "is the suite's constants file (BITNET_CONSTANTS_FILE), which the suite keeps for itself",
        shim: "is the reference shim of llama, which the suite keeps for itself",
        cache / "models" / "synthetic.gguf": f"lies in the suite's cache (BITNET_CACHE_DIR) {cache}",
        cache: f"lies in the suite's cache (BITNET_CACHE_DIR) {cache}",
        tmp_path / "lib" / "libllama.so": "lies in the libraries of llama",
    }
    for path, fragment in cases.items():
        with pytest.raises(BadInput) as caught:
            check_outputs_apart({"--junit": path}, protected)
        assert fragment in caught.value.message, path
    check_outputs_apart({"--junit": tmp_path / "j.xml"}, protected)


def test_a_synthetic_model_is_no_input_path_of_its_own(tmp_path: Path) -> None:
    ctx = load_context({"BITNET_CACHE_DIR": str(tmp_path / "cache")})
    protected = protected_paths(CrossvalRequest(), ctx)
    assert [p.what for p in protected if p.read_by_run] == []  # it lives in the cache, which is guarded whole
