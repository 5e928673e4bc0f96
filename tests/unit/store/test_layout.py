from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitnet_crossval.backends.specs import LLAMA_CPP_COMMIT
from bitnet_crossval.errors import BadInput, PermissionDenied
from bitnet_crossval.store.layout import (
    CacheLayout,
    cache_root_from,
    check_cache_root,
    constants_path_from,
    short_key,
)

PINNED_GIT = {"kind": "git", "location": "https://github.com/ggml-org/llama.cpp", "commit": LLAMA_CPP_COMMIT}
PYPI = {"kind": "pypi", "location": "llama-cpp-python==0.3.36", "commit": LLAMA_CPP_COMMIT}


def test_build_dirs_are_stable_per_source_and_distinct_between_sources(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path)
    a = cache.backend_build("llama", PINNED_GIT)
    assert a == cache.backend_build("llama", PYPI)  # same commit, same incremental build dir
    assert a != cache.backend_build("llama", {**PINNED_GIT, "commit": "1" * 40})
    assert a != cache.backend_build("bitnet", PINNED_GIT)
    local = cache.backend_build("llama", {"kind": "local", "location": "/src/llama.cpp"})
    assert local.name.startswith("llama-local-") and local.parent == cache.builds


def test_every_path_it_makes_is_under_the_root(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path / "root")
    paths = [
        cache.git_source("llama", "a" * 40),
        cache.archive_source("llama", "b" * 64),
        cache.pypi_source("llama", "0.3.36"),
        cache.download("https://example.com/x/src.tar.gz?x=1"),
        cache.named_download("pkg.tar.gz"),
        cache.backend_build("llama", PINNED_GIT),
        cache.shim_build("llama", Path("/elsewhere/lib")),
        cache.install_dir("llama"),
        cache.staging_dir("llama", 12),
        cache.retired_dir("llama", 12),
        cache.lock_path("llama"),
        cache.log_file("setup", "llama"),
        cache.model_file("m.gguf"),
        cache.hf_weights_entry("c" * 64, "5.25.0"),
        cache.hf_weights_staging(cache.hf_weights_entry("c" * 64, "5.25.0"), 12),
        cache.hf_weights_lock(cache.hf_weights_entry("c" * 64, "5.25.0")),
        cache.constants_file,
    ]
    for path in paths:
        assert path.is_relative_to(cache.root), path
    assert len(set(paths)) == len(paths)


def test_downloads_of_urls_with_the_same_file_name_do_not_collide(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path)
    a = cache.download("https://a.example/src.tar.gz")
    b = cache.download("https://b.example/src.tar.gz")
    assert a != b and a.name.endswith("-src.tar.gz") and b.name.endswith("-src.tar.gz")
    assert cache.download("https://a.example/my%20src.tar.gz").name.endswith("-my src.tar.gz")


def test_log_files_are_per_process(tmp_path: Path) -> None:
    log = CacheLayout(tmp_path).log_file("shim", "llama")
    assert log.name.startswith("shim-llama-") and log.name.endswith(f"-{os.getpid()}.log")


def test_short_key_is_twelve_hex_digits_and_stable() -> None:
    assert short_key("x") == short_key("x") != short_key("y")
    assert len(short_key("x")) == 12 and int(short_key("x"), 16) >= 0


def test_leftovers_are_the_staging_and_retired_dirs_of_one_backend(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path)
    for path in (cache.staging_dir("llama", 1), cache.retired_dir("llama", 2), cache.staging_dir("bitnet", 3)):
        path.mkdir(parents=True)
    cache.install_dir("llama").mkdir()
    assert cache.install_leftovers("llama") == [cache.staging_dir("llama", 1), cache.retired_dir("llama", 2)]


def test_ensure_creates_the_layout_and_the_cachedir_tag(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path / "new")
    cache.ensure()
    for directory in (cache.sources, cache.downloads, cache.builds, cache.installs, cache.locks, cache.logs):
        assert directory.is_dir()
    assert (cache.root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_ensure_on_a_root_that_is_a_file_is_bad_input(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(BadInput, match=r"is not a directory|a part of that path is a file"):
        CacheLayout(file).ensure()


def test_ensure_on_a_read_only_root_is_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionDenied) as info:
        CacheLayout(tmp_path / "ro").ensure()
    assert info.value.exit_code == 4


def test_roots_come_from_the_environment(tmp_path: Path) -> None:
    env = {"BITNET_CACHE_DIR": str(tmp_path / "c")}
    root = cache_root_from(env)
    assert root == tmp_path / "c"
    assert constants_path_from(env, root) == root / "constants.json"
    assert constants_path_from({**env, "BITNET_CONSTANTS_FILE": str(tmp_path / "k.json")}, root) == tmp_path / "k.json"


# --- a root that holds the user's files is never taken over ------------------------------------------


def test_a_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root_from({"BITNET_CACHE_DIR": "~"}) == tmp_path
    assert cache_root_from({"BITNET_CACHE_DIR": "~/bitnet"}) == tmp_path / "bitnet"


def test_a_directory_holding_the_users_files_is_refused_and_left_untouched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("")
    (home / "Documents").mkdir()
    (home / "builds").mkdir()  # a name the layout uses does not make the rest the suite's
    for check in (lambda: check_cache_root(home), CacheLayout(home).ensure):
        with pytest.raises(BadInput) as caught:
            check()
        assert caught.value.message == (
            f"BITNET_CACHE_DIR={home} is a directory the suite did not create (it holds '.bashrc' and 1 more), "
            "so the suite will not use it as its cache"
        )
        assert (
            caught.value.next_step == f"point BITNET_CACHE_DIR at a new or empty directory, such as {home / 'bitnet'}"
        )
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", "Documents", "builds"]


@pytest.mark.parametrize(
    "contents",
    [[], ["sources"], ["sources", "constants.json", ".constants.json.abc123.tmp", "models"], ["locks", "logs"]],
    ids=["empty", "a-prepared-vocabulary", "an-untagged-cache", "locks-and-logs"],
)
def test_an_empty_root_or_one_holding_only_layout_names_is_taken(tmp_path: Path, contents: list[str]) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    for name in contents:
        (root / name).mkdir() if "." not in name else (root / name).write_text("{}")
    check_cache_root(root)
    CacheLayout(root).ensure()
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_a_root_with_the_suites_tag_may_hold_anything(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    CacheLayout(root).ensure()
    (root / "notes.txt").write_text("the user's, in the suite's cache")
    check_cache_root(root)
    CacheLayout(root).ensure()


@pytest.mark.parametrize(
    "tag",
    ["Signature: 8a477f597d28d172789f06886806bc55\n# created by another tool\n", "not a tag"],
    ids=["another-programs-tag", "garbage"],
)
def test_another_programs_tag_does_not_make_a_root_ours(tmp_path: Path, tag: str) -> None:
    root = tmp_path / "theirs"
    root.mkdir()
    (root / "CACHEDIR.TAG").write_text(tag)
    (root / "their-cache-entry").write_text("")
    with pytest.raises(BadInput, match="the suite did not create"):
        check_cache_root(root)
    assert (root / "CACHEDIR.TAG").read_text() == tag


def test_a_fifo_named_like_the_tag_is_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    os.mkfifo(root / "CACHEDIR.TAG")
    (root / "x").write_text("")
    with pytest.raises(BadInput, match="the suite did not create"):
        check_cache_root(root)  # returns at once: reading the FIFO would block


def test_the_model_record_is_beside_the_model(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path)
    assert cache.model_record("m.gguf").parent == cache.model_file("m.gguf").parent == cache.models
    assert cache.model_record("m.gguf") != cache.model_file("m.gguf")


def test_every_top_level_path_of_the_layout_counts_as_the_suites(tmp_path: Path) -> None:
    """A directory a later version adds to the layout (a property of CacheLayout) is known at once."""
    probe = CacheLayout(tmp_path / "cache")
    top = [
        value
        for attribute in vars(CacheLayout).values()
        if isinstance(attribute, property) and isinstance(value := attribute.__get__(probe), Path)
        if value.parent == probe.root
    ]
    assert {p.name for p in top} >= {"sources", "builds", "installs", "models", "constants.json"}
    probe.root.mkdir()
    for path in top:
        path.mkdir() if path.suffix != ".json" else path.write_text("{}")
    check_cache_root(probe.root)
