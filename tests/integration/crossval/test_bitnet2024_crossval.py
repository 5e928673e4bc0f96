"""`invoke crossval-per-token --backend bitnet` on the real 2024 bitnet.cpp with ternary models,
against the model as given (native), its float copy (dequantized) and both (auto).

The models are the synthetic ternary `bitnet` model as TQ2_0 (written by the suite) and as I2_S
(written by bitnet.cpp's own quantiser); the candidate is the NumPy engine, which computes in
float: it follows the float copy at float precision, and is further from what bitnet.cpp computes
on the model as given (bitnet.cpp rounds the activations to 8 bits before its ternary kernels). An
engine fault is caught and, with ``--trace``, named at its tensor on the float copy.

The install, the shim and the models are the session's (tests/bitnet2024.py: one install from
the archive, made before the first test; slow).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.backends.specs import BITNET
from bitnet_crossval.crossval.engine import EngineOptions, Fault, load_engine
from bitnet_crossval.reference.client import Shim
from tests.bitnet2024 import SKIPS
from tests.helpers import run_invoke
from tests.integration.crossval.conftest import assert_one_error, strict_json
from tests.shim_cache import cache_env_with_shim

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800), *SKIPS]

FLOAT_KL, QUANTISED_KL = 0.002, 0.1
DIVERGENCE = 10
PROMPT = "The quick brown fox jumps over the lazy dog"
TERNARY = ("TQ2_0", "I2_S")


@dataclass(frozen=True)
class BitnetCache:
    """A cache whose constants list the 2024 bitnet.cpp install and a shim built against it."""

    root: Path
    env: dict[str, str]

    def run(self, model: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], Any]:
        result = run_invoke(
            [
                "crossval-per-token", "--repair", "never", "--backend", "bitnet", "--model", str(model),
                "--prompt", PROMPT, "--max-tokens", "4", "--format", "json", *args,
            ],
            env=self.env,
            timeout=timeout,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return result, strict_json(result.stdout)


@pytest.fixture(scope="module")
def bitnet_cache(tmp_path_factory: pytest.TempPathFactory, bitnet_install: Path, bitnet: Shim) -> BitnetCache:
    """What `invoke rebuild` writes for the install, with the module's shim instead of a second build."""
    root = tmp_path_factory.mktemp("bitnet-2024-crossval") / "cache"
    return BitnetCache(root=root, env=cache_env_with_shim(root, BITNET, bitnet_install, bitnet))


def _distances(doc: dict[str, Any]) -> str:
    refs = doc["references"]
    return ", ".join(f"{name} mean {d['mean_kl']:.3g} max {d['max_kl']:.3g}" for name, d in refs["distances"].items())


@pytest.mark.parametrize("tensor_type", TERNARY)
def test_the_numpy_engine_follows_the_float_copy_of_a_ternary_model(
    bitnet_cache: BitnetCache,
    bitnet_models: dict[str, Path],
    tensor_type: str,
) -> None:
    model = bitnet_models[tensor_type]

    auto, auto_doc = bitnet_cache.run(model, "--reference", "auto")
    assert auto.returncode == 0, auto.stderr[-3000:]
    refs = auto_doc["references"]
    assert auto_doc["verdict"] == "parity" and auto_doc["model"]["precision"] == "quantized"
    assert refs["mode"] == "auto" and refs["references"] == ["native", "dequantized"]
    assert refs["followed"] == "dequantized" and auto_doc["thresholds"]["kl_max"] == FLOAT_KL
    near, far = refs["distances"]["dequantized"], refs["distances"]["native"]
    assert near["max_kl"] < FLOAT_KL and far["mean_kl"] > 10 * near["mean_kl"]
    copy = refs["float_copy"]
    if tensor_type == "TQ2_0":  # the fork dequantises its own TQ2_0; its I2_S only the suite's decoder reads
        assert copy["dequantized_by_backend"] == 21
    else:
        assert copy["dequantized_by_backend"] == 0
    assert auto_doc["reference"]["float_copy"]["path"] == copy["path"]

    dequantized, dequantized_doc = bitnet_cache.run(model, "--reference", "dequantized")
    assert dequantized.returncode == 0, dequantized.stderr[-3000:]
    refs = dequantized_doc["references"]
    # The model as given still runs (it generates the continuation); the float copy judges.
    assert refs["references"] == ["native", "dequantized"]
    assert refs["followed"] == "dequantized" and refs["why"] == "as asked"
    assert dequantized_doc["thresholds"]["kl_max"] == FLOAT_KL
    assert dequantized_doc["tokens"] == auto_doc["tokens"]
    assert refs["distances"]["dequantized"]["max_kl"] == pytest.approx(near["max_kl"], rel=1e-6, abs=1e-12)

    native, native_doc = bitnet_cache.run(model, "--reference", "native")
    refs = native_doc["references"]
    assert refs["references"] == ["native"] and refs["followed"] == "native"
    assert native_doc["thresholds"]["kl_max"] == QUANTISED_KL
    assert native_doc["tokens"] == auto_doc["tokens"]
    native_max = refs["distances"]["native"]["max_kl"]
    assert native_max == pytest.approx(far["max_kl"], rel=1e-6, abs=1e-12)
    # Within the quantised limit of the model as given, yet beyond the float limit: bitnet.cpp's
    # 8-bit activations are what the float engine cannot follow.
    assert native.returncode == 0 and native_doc["verdict"] == "parity", native.stderr[-3000:]
    assert FLOAT_KL < native_max <= QUANTISED_KL
    print(
        f"\nbitnet.cpp 2024, numpy on {tensor_type}: auto -> {auto_doc['references']['followed']} "
        f"({_distances(auto_doc)}); --reference native: {native_doc['verdict']} (max KL {native_max:.3g})"
    )


@pytest.mark.parametrize("tensor_type", TERNARY)
def test_an_engine_fault_is_named_at_its_tensor_on_the_float_copy(
    bitnet_cache: BitnetCache,
    bitnet_models: dict[str, Path],
    tensor_type: str,
) -> None:
    model = bitnet_models[tensor_type]
    site = load_engine(model, EngineOptions(fault=Fault(name="norm_eps"))).fault_site()  # type: ignore[arg-type]
    assert site is not None and site.key == "attn_norm-0"
    result, doc = bitnet_cache.run(model, "--candidate", "numpy:norm_eps", "--trace")
    assert_one_error(result, DIVERGENCE, "parity failed")
    assert doc["verdict"] == "divergence" and doc["references"]["followed"] == "dequantized"
    trace = doc["trace"]
    departure = trace["first_departure"]
    compared = [(t["name"], t["agrees"]) for t in trace["compared"]]
    assert departure is not None and departure["name"] == site.key, compared
    assert all(agrees for _name, agrees in compared[:-1])
    assert departure["judged_by"] == "relative error" and departure["max_rel_error"] > departure["tolerance"]
    print(
        f"\nbitnet.cpp 2024, numpy:norm_eps on {tensor_type}: named at {departure['name']} "
        f"(relative error {departure['max_rel_error']:.3g} > {departure['tolerance']:.3g})"
    )
