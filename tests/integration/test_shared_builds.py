"""The shared builds (tests/shared_builds.py) in a real pytest run of their own: which run, when,
outside which time limit, what they print while they run, and what a failure looks like."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.helpers import HANG_SECONDS, REPO_ROOT

pytestmark = pytest.mark.integration

CONFTEST = """
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.shared_builds")
import tests.shared_builds as shared
from tests.shared_builds import SharedBuildFailed, Workshop, shared_build, shared_result

pytest_plugins = ["tests.shared_builds"]
shared.HEARTBEAT_SECONDS = 0.3
RECORD = Path(os.environ["SHARED_BUILD_RECORD"])


def record(event: str) -> None:
    with RECORD.open("a") as out:
        out.write(event + "\\n")


@shared_build("base", title="the base", bound=60)
def build_base(shop: Workshop) -> str:
    record("base")
    child = "import sys; print('from a child process', file=sys.stderr)"
    done = shop.run([sys.executable, "-c", child], env=os.environ)
    assert done.returncode == 0
    print("from the build itself", file=sys.stderr)
    return "base-value"


@shared_build("top", title="built on the base", bound=60, needs=("base",))
def build_top(shop: Workshop) -> str:
    record("top")
    return shop.result("base", str) + "+top"


@shared_build("unused", title="needed by no selected test", bound=60)
def build_unused(shop: Workshop) -> str:
    record("unused")
    return "unused"


@shared_build("slow", title="quiet for a while", bound=60)
def build_slow(shop: Workshop) -> str:
    record("slow")
    time.sleep(2)
    return "slow"


@shared_build("broken", title="fails", bound=60)
def build_broken(shop: Workshop) -> str:
    record("broken")
    for n in range(60):
        print(f"broken says {n:02d}", file=sys.stderr)
    raise SharedBuildFailed("it was meant to")


@shared_build("on_broken", title="needs the broken one", bound=60, needs=("broken",))
def build_on_broken(shop: Workshop) -> str:
    record("on_broken")
    return "never"


@shared_build("hangs", title="never ends", bound=1)
def build_hangs(shop: Workshop) -> str:
    record("hangs")
    script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"
    shop.run([sys.executable, "-c", script, os.environ["SHARED_BUILD_CHILD"]], env=os.environ)
    return "never"


def fixture_of(name: str):  # one session fixture per build, named after it
    @pytest.fixture(scope="session", name=name)
    def give(request: pytest.FixtureRequest) -> str:
        record(f"fixture {name}")
        return shared_result(request, name, str)

    return give


for _name in ("base", "top", "unused", "slow", "broken", "on_broken", "hangs"):
    globals()[f"fixture_{_name}"] = fixture_of(_name)
"""


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``run(tests, *args)``: a pytest run in a process of its own, of ``tests`` (a test module's
    source) with the shared builds of CONFTEST; returns its output and the builds' record."""
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    record = tmp_path / "record.txt"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SHARED_BUILD_RECORD", str(record))
    monkeypatch.setenv("SHARED_BUILD_CHILD", str(tmp_path / "child.pid"))

    def go(tests: str, *args: str) -> tuple[pytest.RunResult, list[str]]:
        pytester.makepyfile(test_it=textwrap.dedent(tests))
        result = pytester.runpytest_subprocess(*args, timeout=HANG_SECONDS)
        return result, record.read_text().splitlines() if record.exists() else []

    return go


def test_only_the_builds_the_selected_tests_use_run_once_each_before_the_first_test(run) -> None:
    result, record = run(
        """
        def test_top(top):
            assert top == "base-value+top"

        def test_top_again(top, base):
            assert base == "base-value"

        def test_unused(unused):
            pass

        def test_nothing():
            pass
        """,
        "-k",
        "not unused",
    )
    result.assert_outcomes(passed=3, deselected=1)
    # Each build once, what it needs first, all before the first fixture hands one out.
    assert record[:2] == ["base", "top"]
    assert "unused" not in record
    assert record[2:] == ["fixture top", "fixture base"]
    out = result.stdout.str()
    assert out.index("shared builds for the selected tests") < out.index("test_it.py")
    # Its own lines and its child's, as they came.
    assert "    from a child process" in out and "    from the build itself" in out
    assert "base: built in" in out and "top: built in" in out  # the summary at the end


def test_a_build_is_outside_the_per_test_time_limit_and_says_it_is_still_running(run) -> None:
    # A one-second limit covering setup (func_only off) and a build of two quiet seconds.
    result, record = run(
        """
        import pytest

        @pytest.mark.timeout(1, func_only=False)
        def test_slow(slow):
            assert slow == "slow"
        """
    )
    result.assert_outcomes(passed=1)
    assert record == ["slow", "fixture slow"]
    result.stdout.fnmatch_lines(["*slow: still running (0m0?s)*"])


def test_a_failed_build_is_reported_once_and_the_tests_that_need_it_error_pointing_there(run) -> None:
    result, record = run(
        """
        def test_one(broken):
            pass

        def test_two(on_broken):
            pass

        def test_unrelated(base):
            pass
        """
    )
    result.assert_outcomes(passed=1, errors=2)
    assert "on_broken" not in record  # what needs a failed build is not attempted
    out = result.stdout.str()
    assert out.count("shared build failed: broken") == 1
    assert "broken (fails) failed: it was meant to" in out
    report = out[out.index("shared build failed: broken") : out.index("every test that needs 'broken' errors")]
    assert "the last 40 lines of its output (all of it in " in report
    assert "    broken says 59" in report and "    broken says 20" in report and "broken says 19" not in report
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_one*",
            "the shared build 'broken' failed: it was meant to; see 'shared build failed' above",
            "*ERROR at setup of test_two*",
            "the shared build 'on_broken' was not built: it needs 'broken', which failed; see *",
        ]
    )


def test_a_build_that_outlives_its_bound_is_stopped_with_its_processes(run, tmp_path: Path) -> None:
    result, _record = run(
        """
        def test_hangs(hangs):
            pass
        """
    )
    result.assert_outcomes(errors=1)
    assert "hangs (never ends) did not finish within its bound of 0m01s and was stopped" in result.stdout.str()
    child = int((tmp_path / "child.pid").read_text())
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", "the build's child still runs"


def test_a_run_that_needs_no_shared_build_prints_nothing_of_them(run) -> None:
    result, record = run(
        """
        import pytest

        def test_nothing():
            pass

        @pytest.mark.skip(reason="a skipped test needs nothing built")
        def test_skipped(top):
            pass

        @pytest.mark.skipif(True, reason="nor does one skipped on a condition")
        def test_skipped_if(base):
            pass
        """
    )
    result.assert_outcomes(passed=1, skipped=2)
    assert record == []
    assert "shared builds" not in result.stdout.str()
