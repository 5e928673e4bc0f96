"""The hf child's fault-injection seam (BITNET_HF_PATCH=MODULE:FUNCTION): called on the loaded
model, named in the result; a value that names nothing is bad input. No torch: any object will do."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bitnet_crossval.crossval.hf.runner import PATCH_ENV, apply_patch
from bitnet_crossval.errors import BadInput


def test_unset_changes_nothing() -> None:
    model = SimpleNamespace(touched=False)
    assert apply_patch(model, "") is None
    assert model.touched is False


def test_the_function_is_called_on_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "seam_faults_example.py").write_text("def touch(model):\n    model.touched = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = SimpleNamespace(touched=False)
    assert apply_patch(model, "seam_faults_example:touch") == "seam_faults_example:touch"
    assert model.touched is True
    assert "patched by seam_faults_example:touch" in capsys.readouterr().out
    sys.modules.pop("seam_faults_example", None)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("no_colon", "is not MODULE:FUNCTION"),
        ("module:not-a-name", "is not MODULE:FUNCTION"),
        ("no_such_module_here:f", "names nothing the child can import"),
        ("json:no_such_function", "names nothing the child can import"),
    ],
)
def test_a_value_that_names_nothing_is_bad_input(value: str, fragment: str) -> None:
    with pytest.raises(BadInput, match=fragment) as caught:
        apply_patch(object(), value)
    assert PATCH_ENV in caught.value.next_step
