"""`invoke crossval-per-token` never overwrites what it reads, never writes through a link, reads a
tokens file in bounded memory without quoting it, repairs what it keeps in its cache, survives
closed and full output streams, and refuses up front what would fail late: each as a user meets it,
with real processes and the real llama.cpp (docs/reference/bad-inputs.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.models import parse_model, resolve_model
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.store.constants import read_constants
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.files import file_sha256
from tests.helpers import REPO_ROOT
from tests.integration.crossval.conftest import (
    VOCAB_NAME,
    CrossvalCache,
    assert_one_error,
    json_error,
    strict_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PY = "py:tests.integration.crossval.stream_candidates"
SHORT = ("--prompt", "The cat sat", "--max-tokens", "1")


def invoke_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never", *args]


def shim_of(cache: CrossvalCache) -> Path:
    record = read_constants(cache.root / "constants.json").record("llama")
    assert record is not None and record.shim is not None
    return Path(record.shim)


@pytest.fixture
def private_cache(crossval_cache: CrossvalCache, tmp_path: Path) -> CrossvalCache:
    """A cache of its own for a test that damages what the cache holds: the session's shim (named by
    the session's constants file), but models written here."""
    root = tmp_path / "private-cache"
    vocab = root / "sources" / "llama-vocab" / "models" / VOCAB_NAME
    vocab.parent.mkdir(parents=True)
    shutil.copyfile(crossval_cache.vocab, vocab)
    env = {
        **crossval_cache.env,
        "BITNET_CACHE_DIR": str(root),
        "BITNET_CONSTANTS_FILE": str(crossval_cache.root / "constants.json"),
    }
    return CrossvalCache(root=root, env=env, llama_install=crossval_cache.llama_install, vocab=vocab)


@pytest.fixture(scope="module")
def small_model(crossval_cache: CrossvalCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF file the user owns (a copy of the synthetic model), to name as --model."""
    result = crossval_cache.run(*SHORT, "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    source = Path(strict_json(result.stdout)["model"]["path"])
    copy = tmp_path_factory.mktemp("user-model") / "model.gguf"
    shutil.copyfile(source, copy)
    return copy


# --- 1. outputs never follow a link planted at a temporary name ---------------------------------


PLANTED = {
    "symlink": lambda at, victim: at.symlink_to(victim.name),
    "directory": lambda at, victim: at.mkdir(),
    "fifo": lambda at, victim: os.mkfifo(at),
}


@pytest.mark.parametrize("planted", PLANTED.values(), ids=PLANTED.keys())
def test_the_plot_is_never_written_through_what_sits_at_its_old_temporary_name(
    crossval_cache: CrossvalCache, tmp_path: Path, planted: Any
) -> None:
    """The plot was saved to the fixed name `.NAME.tmp.png` beside it, following a link planted
    there (the victim became a PNG), and opening a FIFO there; now it takes a fresh, exclusive
    temporary name like every output."""
    out = tmp_path / "out"
    out.mkdir()
    victim = out / "victim.txt"
    victim.write_text("the user's own file\n")
    trap = out / ".p2.png.tmp.png"
    planted(trap, victim)
    before = trap.lstat()
    plot, report, junit = out / "p2.png", out / "r.json", out / "j.xml"
    result = crossval_cache.run(*SHORT, "--plot", str(plot), "--report", str(report), "--junit", str(junit))
    assert result.returncode == 0, result.stderr[-3000:]
    assert victim.read_text() == "the user's own file\n"
    after = trap.lstat()
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
    for path in (plot, report, junit):
        assert stat.S_ISREG(path.lstat().st_mode), path
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads(report.read_text())["verdict"] == "parity"
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers == sorted(["victim.txt", ".p2.png.tmp.png", "p2.png", "r.json", "j.xml"]), leftovers


# --- 2. an output is never an input, another output, or the suite's own file -------------------


def _overlap_cases(cache: CrossvalCache, model: Path, tmp: Path) -> dict[str, tuple[list[str], str, Path]]:
    """id -> (arguments, what the error says, the file that must be left untouched)."""
    tokens = tmp / "ids.txt"
    tokens.write_text("1 450 7483\n")
    tokenizer = tmp / "tokenizer.json"
    tokenizer.write_text("{}")
    linked_model = tmp / "hard-link.gguf"
    os.link(model, linked_model)
    via_link = tmp / "via-link"
    via_link.symlink_to(model.parent, target_is_directory=True)
    shim = shim_of(cache)
    existing_output = tmp / "same.json"
    existing_output.write_text("{}\n")
    synthetic = next((cache.root / "models").glob("synthetic-llama-f32-*.gguf"))
    return {
        "report-is-model": (["--model", str(model), "--report", str(model)], "is the model (--model)", model),
        "report-is-hard-link-of-model": (
            ["--model", str(model), "--report", str(linked_model)],
            "is the model (--model)",
            model,
        ),
        "report-is-model-through-a-linked-directory": (
            ["--model", str(model), "--report", str(via_link / model.name)],
            "is the model (--model)",
            model,
        ),
        "junit-is-tokens-file": (
            ["--model", str(model), "--tokens-file", str(tokens), "--junit", str(tokens)],
            "is the tokens file (--tokens-file)",
            tokens,
        ),
        "plot-is-tokenizer": (
            ["--model", str(model), "--tokenizer", str(tokenizer), "--plot", str(tokenizer)],
            "is the tokenizer (--tokenizer)",
            tokenizer,
        ),
        "report-is-junit": (
            ["--report", str(existing_output), "--junit", str(existing_output)],
            "--report and --junit name the same file",
            existing_output,
        ),
        "report-is-plot": (
            ["--report", str(tmp / "new.out"), "--plot", str(tmp / "new.out")],
            "--report and --plot name the same file",
            tmp / "new.out",
        ),
        "report-is-the-shim": (["--report", str(shim)], "lies in the suite's cache", shim),
        "report-is-the-synthetic-model": (["--report", str(synthetic)], "lies in the suite's cache", synthetic),
        "report-is-the-constants-file": (
            ["--report", str(cache.root / "constants.json")],
            "lies in the suite's cache",
            cache.root / "constants.json",
        ),
    }


OVERLAPS = [
    "report-is-model",
    "report-is-hard-link-of-model",
    "report-is-model-through-a-linked-directory",
    "junit-is-tokens-file",
    "plot-is-tokenizer",
    "report-is-junit",
    "report-is-plot",
    "report-is-the-shim",
    "report-is-the-synthetic-model",
    "report-is-the-constants-file",
]


@pytest.mark.parametrize("case", OVERLAPS)
def test_an_output_that_is_an_input_another_output_or_the_suites_own_file_is_refused_at_the_start(
    crossval_cache: CrossvalCache, small_model: Path, tmp_path: Path, case: str
) -> None:
    """`--report` equal to `--model` replaced a 73 MB GGUF with 15 KB of JSON (exit 0); the same for
    the tokens file, another output, the shim (repair then failed)."""
    args, fragment, untouched = _overlap_cases(crossval_cache, small_model, tmp_path)[case]
    before = untouched.read_bytes() if untouched.exists() else None
    result = crossval_cache.run(*args, "--format", "json")
    assert_one_error(result, 6, fragment)
    json_error(result, 6)
    assert "cross-validation:" not in result.stderr  # refused before anything ran
    assert (untouched.read_bytes() if untouched.exists() else None) == before
    assert shim_of(crossval_cache).stat().st_mode & stat.S_IXUSR


def test_a_constants_file_outside_the_cache_is_refused_as_an_output(
    crossval_cache: CrossvalCache, tmp_path: Path
) -> None:
    constants = tmp_path / "constants.json"
    shutil.copyfile(crossval_cache.root / "constants.json", constants)
    env = {**crossval_cache.env, "BITNET_CONSTANTS_FILE": str(constants)}
    result = crossval_cache.run(*SHORT, "--junit", str(constants), env=env)
    assert_one_error(result, 6, "is the suite's constants file (BITNET_CONSTANTS_FILE)")
    assert constants.read_bytes() == (crossval_cache.root / "constants.json").read_bytes()


# --- 4. the tokens file: never quoted, read in bounded memory -----------------------------------


SECRET = "root:$6$Zq2secretsalt$9hashedpasswordtext0123456789:19000:0:99999:7:::"


@pytest.mark.parametrize(
    "content", [f"{SECRET}\n", f"1 450\n{SECRET}\n", f'[1, 450, "{SECRET}"]'], ids=["first", "later", "json"]
)
def test_a_bad_tokens_file_is_named_by_position_never_quoted(
    crossval_cache: CrossvalCache, tmp_path: Path, content: str
) -> None:
    """`--tokens-file /etc/shadow` showed a hash line in the error."""
    path = tmp_path / "shadow"
    path.write_text(content)
    result = crossval_cache.run("--tokens-file", str(path), "--format", "json")
    assert_one_error(result, 6, "the tokens file")
    json_error(result, 6)
    for fragment in ("Zq2secret", "hashedpassword", "root:"):
        assert fragment not in result.stderr and fragment not in result.stdout


MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "peak_kb": peak_kb}))
"""


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """``argv`` as the only child of a fresh interpreter, and its peak resident memory in bytes."""
    wrapper = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert wrapper.returncode == 0, wrapper.stderr
    measured = json.loads(wrapper.stdout)
    result = subprocess.CompletedProcess(argv, measured["code"], measured["stdout"], measured["stderr"])
    return result, int(measured["peak_kb"]) * 1024


def test_a_huge_sparse_tokens_file_is_refused_without_reading_it(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    """A 3 GB sparse file was read whole before the 64 MB check (6.3 GB RSS)."""
    path = tmp_path / "sparse.txt"
    with path.open("wb") as handle:
        handle.truncate(3 << 30)
    result, peak = run_measured(invoke_argv("--tokens-file", str(path), "--format", "json"), crossval_cache.env)
    assert_one_error(result, 6, f"is larger than 64 MB ({3 << 30} bytes)")
    json_error(result, 6)
    assert peak < 512 << 20, f"peak RSS {peak >> 20} MB"


# --- 3. a cache root that holds the user's files is never taken over ---------------------------


@pytest.mark.parametrize("command", [["rebuild"], ["preflight", "--backend", "llama"], ["crossval-per-token"]])
def test_a_cache_root_holding_the_users_files_is_refused_and_left_alone(
    crossval_cache: CrossvalCache, tmp_path: Path, command: list[str]
) -> None:
    """`BITNET_CACHE_DIR='~'` wrote CACHEDIR.TAG, builds/ and installs/ into $HOME (backup tools
    then skip the home)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# the user's\n")
    (home / "notes.txt").write_text("mine\n")
    env = {**crossval_cache.env, "HOME": str(home), "BITNET_CACHE_DIR": "~"}
    env.pop("BITNET_CONSTANTS_FILE", None)
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *command, "--repair", "never"] if command[0] != "rebuild"
        else [sys.executable, "-m", "invoke", *command],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    line = assert_one_error(result, 6, f"BITNET_CACHE_DIR={home} is a directory the suite did not create")
    assert "'.bashrc' and 1 more" in line
    assert f"point BITNET_CACHE_DIR at a new or empty directory, such as {home / 'bitnet'}" in result.stderr
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", "notes.txt"]


def test_a_tilde_in_the_cache_root_is_expanded(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**crossval_cache.env, "HOME": str(home), "BITNET_CACHE_DIR": "~/bitnet-cache"}
    env.pop("LLAMA_CPP_DIR", None)  # nothing to build: rebuild only records that no backend is there
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "rebuild"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    tag = home / "bitnet-cache" / "CACHEDIR.TAG"
    assert tag.read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert not (REPO_ROOT / "~").exists()


# --- 5. what the cache keeps is repaired: a shim that is not executable, a damaged model -------


def test_a_shim_that_is_not_executable_is_repaired_by_the_crossval(crossval_cache: CrossvalCache) -> None:
    """`chmod -x` on the shim: the crossval ended with "unexpected PermissionError ... report it"."""
    shim = shim_of(crossval_cache)
    shim.chmod(0o644)
    try:
        refused = crossval_cache.run(*SHORT)
        assert_one_error(refused, 1, "its shim cannot be used", "is not executable")
        assert "invoke rebuild" in refused.stderr
        repaired = subprocess.run(
            [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "auto", *SHORT],
            cwd=REPO_ROOT, env=crossval_cache.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert repaired.returncode == 0, repaired.stderr[-3000:]
        assert "repairing the shim of llama.cpp" in repaired.stderr
        assert "parity" in repaired.stderr and "unexpected" not in repaired.stderr
    finally:
        if not shim.stat().st_mode & stat.S_IXUSR:
            shim.chmod(0o755)
    assert shim.stat().st_mode & stat.S_IXUSR
    assert Shim(shim, env=crossval_cache.env).info()["backend"] == "llama"


DAMAGE = {
    "truncated": lambda path: os.truncate(path, path.stat().st_size // 3),
    "garbage": lambda path: path.write_bytes(b"GGUF" + os.urandom(path.stat().st_size - 4)),
    "garbage-same-mtime": lambda path: _overwrite_keeping_mtime(path),
}


def _overwrite_keeping_mtime(path: Path) -> None:
    st = path.stat()
    with path.open("r+b") as handle:
        handle.seek(st.st_size // 2)
        handle.write(os.urandom(4096))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # another time: the record's check hashes it


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_cached_synthetic_model_is_written_again(private_cache: CrossvalCache, damage: Any) -> None:
    """A truncated or garbage synthetic model in the cache was never regenerated; the message said to
    re-download or re-convert it."""
    first = private_cache.run(*SHORT, "--format", "json")
    assert first.returncode == 0, first.stderr[-3000:]
    model = Path(strict_json(first.stdout)["model"]["path"])
    assert model.is_relative_to(private_cache.root)
    sha = file_sha256(model)
    damage(model)
    assert file_sha256(model) != sha
    again = private_cache.run(*SHORT, "--format", "json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"the cached synthetic model {model} is damaged" in again.stderr
    assert strict_json(again.stdout)["verdict"] == "parity"
    assert file_sha256(model) == sha
    third = private_cache.run(*SHORT)
    assert third.returncode == 0 and "damaged" not in third.stderr and "writing the synthetic" not in third.stderr


# --- 6. exit codes and sentences -----------------------------------------------------------------


def test_a_prompt_that_is_not_utf8_is_one_sentence(crossval_cache: CrossvalCache) -> None:
    """`--prompt $'\\xff\\xfe hi'` (surrogate-escaped argv) gave "unexpected UnicodeEncodeError"."""
    argv = [os.fsencode(a) for a in invoke_argv("--format", "json")] + [b"--prompt", b"\xff\xfe hi"]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=crossval_cache.env, capture_output=True, timeout=300)
    result = subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(), done.stderr.decode())
    assert_one_error(result, 6, "--prompt is not UTF-8 text: the byte at offset 0 does not decode")
    json_error(result, 6)


def run_with_closed(cache: CrossvalCache, *args: str, close: str) -> tuple[int, str]:
    """The command with stdout, stderr or both closed (`>&-`, `2>&-`); its exit code and whichever
    stream stayed open."""
    import shlex

    redirect = {"stdout": ">&-", "stderr": "2>&-", "both": ">&- 2>&-"}[close]
    line = f"exec {shlex.join(invoke_argv(*args))} {redirect}"
    done = subprocess.run(["sh", "-c", line], cwd=REPO_ROOT, env=cache.env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr if close == "stdout" else done.stdout


@pytest.mark.parametrize(("candidate", "code"), [("numpy", 0), ("numpy:rope_base", 10)], ids=["parity", "divergence"])
@pytest.mark.parametrize("close", ["stdout", "stderr", "both"])
def test_a_closed_stdout_or_stderr_keeps_the_verdicts_exit_code(
    crossval_cache: CrossvalCache, close: str, candidate: str, code: int
) -> None:
    """`--format json` with stdout closed gave "unexpected AttributeError"; with stderr closed a
    parity run exited 1. The JSON document of a closed stdout is lost, and stderr says so."""
    args = (*SHORT, "--candidate", candidate, "--format", "json")
    exit_code, other = run_with_closed(crossval_cache, *args, close=close)
    assert exit_code == code, other[-3000:]
    if close == "stdout":
        assert "stdout is closed or cannot be written, so the JSON document was not printed" in other
        assert "unexpected" not in other and "Traceback" not in other
    if close == "stderr":
        assert strict_json(other)["verdict"] == ("parity" if code == 0 else "divergence")


@pytest.mark.parametrize("function", ["closes_stdout", "drops_stdout"])
def test_a_candidate_that_closes_stdout_does_not_crash_the_suite(crossval_cache: CrossvalCache, function: str) -> None:
    result = crossval_cache.run(*SHORT, "--candidate", f"{PY}:{function}", "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    if result.stdout:
        assert strict_json(result.stdout)["verdict"] == "parity"
    else:  # the candidate ran in the suite's process and took its stdout with it
        assert "the JSON document was not printed" in result.stderr


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs of 64 KiB, filled up."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        fd = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)


def test_a_report_on_a_full_disk_still_prints_the_json_document(crossval_cache: CrossvalCache, full_dir: Path) -> None:
    """`--format json --report` on a full disk: exit 1 and stdout empty. Now the document comes,
    with the verdict and the error, and the next step is about that file."""
    report = full_dir / "r.json"
    result = crossval_cache.run(*SHORT, "--format", "json", "--report", str(report))
    line = assert_one_error(result, 1, f"cannot write to {report}: No space left on device")
    assert line
    document = strict_json(result.stdout)
    assert document["verdict"] == "parity" and document["ok"] is False
    assert document["error"]["exit_code"] == 1 and str(report) in document["error"]["message"]
    assert f"free space on the file system that holds {report}" in document["error"]["next_step"]
    assert "--report" in document["error"]["next_step"] and "BITNET_CACHE_DIR" not in result.stderr
    assert sorted(p.name for p in full_dir.iterdir()) == ["filler"]  # no temporary file left


def chattr(flag: str, path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} was refused here: {done.stderr.strip()}")


@pytest.fixture
def report_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "r.json"
    path.write_text("{}\n")
    yield path
    subprocess.run(["chattr", "-i", "-a", str(path)], capture_output=True, check=False)


def test_an_immutable_report_file_is_refused_at_the_start_naming_it(
    crossval_cache: CrossvalCache, report_file: Path
) -> None:
    """`chattr +i` on the report: exit 4 after a whole parity run, and the next step blamed the
    cache directory."""
    chattr("+i", report_file)
    result = crossval_cache.run(*SHORT, "--format", "json", "--report", str(report_file))
    assert_one_error(result, 4, f"the --report file {report_file} is read-only or immutable")
    json_error(result, 4)
    assert "cross-validation:" not in result.stderr
    assert f"make {report_file} writable" in result.stderr and "BITNET_CACHE_DIR" not in result.stderr
    assert report_file.read_text() == "{}\n"


def test_a_report_file_that_cannot_be_replaced_after_the_run_names_the_file(
    crossval_cache: CrossvalCache, report_file: Path
) -> None:
    """An append-only file (`chattr +a`) passes the check at the start and refuses the rename at the
    end: exit 4, the JSON document with the verdict and the error, the next step about the file."""
    chattr("+a", report_file)
    result = crossval_cache.run(*SHORT, "--format", "json", "--report", str(report_file))
    assert_one_error(result, 4, f"cannot write to {report_file}: Operation not permitted")
    document = strict_json(result.stdout)
    assert document["verdict"] == "parity" and document["error"]["exit_code"] == 4
    assert f"make {report_file} and its directory writable" in result.stderr
    assert "BITNET_CACHE_DIR" not in result.stderr
    assert report_file.read_text() == "{}\n"


# --- 6. --trace-names: the grammar both sides read, and a filter that matches nothing -----------


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("(?P<x>Qcur)-0", "uses the group '(?P' at offset 0"),
        ("(?i)qcur-0", "uses the group '(?i' at offset 0"),
        ("(?<=attn_)norm-0", "uses the group '(?<=' at offset 0"),
        ("Qcur-[[:digit:]]", "uses '[' inside a class at offset 6"),
        ("ffn_.*+", "uses a second quantifier '+' at offset 6"),
    ],
)
def test_a_trace_filter_only_python_reads_is_refused_before_the_run(
    crossval_cache: CrossvalCache, pattern: str, fragment: str
) -> None:
    """Patterns Python accepts and the shim's ECMAScript std::regex does not failed only after the
    whole run."""
    result = crossval_cache.run(*SHORT, "--candidate", "numpy:rope_base", "--trace-names", pattern, "--format", "json")
    assert_one_error(result, 6, f"--trace-names {pattern!r} {fragment}")
    json_error(result, 6)
    assert "cross-validation:" not in result.stderr
    assert "e.g. --trace-names '(attn|ffn)_norm-[0-9]+'" in result.stderr


ACCEPTED = [
    "attn_.*",
    "(attn|ffn)_norm-[0-9]+",
    r"[QK]cur-\d",
    r"l_out-(?:0|2)",
    "(?!ffn).*-1",
    r"result_\w+",
    "embd|norm",
    "[^_]+-1",
    r"ffn_[a-z]{2,4}-0",
    r"attn_norm\-0",
    r"[\-_a-z]+\-1",
    r"\bQcur-0",
    r"Q\Bcur-0",
    r"\S+_out-\d",
    r"[.]*embd",
    r"[a-z_]*?norm",
    "nothing-matches-this",
]


def test_the_shim_and_python_select_the_same_tensors_with_every_accepted_pattern(
    crossval_cache: CrossvalCache, tmp_path: Path
) -> None:
    from bitnet_crossval.crossval.name_pattern import check_name_pattern

    model = resolve_model(
        parse_model("synthetic:llama"), cache=CacheLayout(crossval_cache.root), env=crossval_cache.env, source_dirs=[]
    )
    shim = Shim(shim_of(crossval_cache), env=crossval_cache.env)
    tokens = [1, 450, 7483]
    every = list(shim.trace(model, tokens, out_dir=tmp_path / "all").names)
    assert len(every) > 40
    for index, pattern in enumerate(ACCEPTED):
        check_name_pattern(pattern)
        selected = list(shim.trace(model, tokens, out_dir=tmp_path / f"t{index}", names=pattern).names)
        assert selected == [name for name in every if re.fullmatch(pattern, name)], pattern


def test_a_trace_filter_that_matches_nothing_says_so(crossval_cache: CrossvalCache) -> None:
    """A filter matching nothing said "the candidate wrote no trace ... add a {trace} placeholder"."""
    result = crossval_cache.run(*SHORT, "--candidate", "numpy:rope_base", "--trace-names", "zzz", "--format", "json")
    line = assert_one_error(result, 10, "the trace filter --trace-names 'zzz' matched no tensor of the reference")
    assert "wrote no trace" not in line and "{trace}" not in result.stderr
    assert "widen --trace-names 'zzz'" in result.stderr
    trace = strict_json(result.stdout)["trace"]
    assert trace["unmatched_filter"] == "--trace-names 'zzz'" and trace["compared"] == []
