"""Fetching one commit of a git remote into the cache, and what commit a local work tree is at.

Only the one commit is fetched (``--depth 1``), with a full fetch when a server will not serve
a commit by its id; a branch, tag or the remote HEAD is first resolved to its commit with
``ls-remote`` so the cache entry is named by what was actually checked out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.backends.specs import BackendSpec
from bitnet_crossval.errors import BadInput, CommandFailed, ProgramNotFound, SuiteError, UnclassifiedError
from bitnet_crossval.provision.sources.classify import classify_failure, is_transient, server_refused_commit
from bitnet_crossval.provision.sources.spec import FULL_SHA, FetchedSource, SourceSpec, check_local_git_url, redact_url
from bitnet_crossval.provision.sources.staging import assemble, read_marker
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util import proc, ui
from bitnet_crossval.util.retry import RetryPolicy, net_timeout, with_retries


def fetch_git(
    source: SourceSpec, *, spec: BackendSpec, cache: CacheLayout, env: Mapping[str, str], policy: RetryPolicy
) -> FetchedSource:
    """Check the commit ``source`` names out into the cache, reusing a finished checkout."""
    url = source.location
    git = _Git(url=url, spec=spec, env=env, policy=policy)
    pinned = source.ref if source.ref and FULL_SHA.match(source.ref) else None
    if pinned is not None and (finished := read_marker(cache.git_source(spec.name, pinned))) is not None:
        return FetchedSource(path=cache.git_source(spec.name, pinned) / finished, identity=git_identity(url, pinned))
    if url.lower().startswith("file:"):  # before git runs: nothing about a local path is a network problem
        check_local_git_url(url, spec=spec, must_exist=True)
    commit = pinned or git.resolve(source.ref)
    identity = git_identity(url, commit)
    final = cache.git_source(spec.name, commit)
    finished = read_marker(final)
    if finished is not None:
        return FetchedSource(path=final / finished, identity=identity)
    ui.say(f"fetching {spec.display} {commit[:12]} from {redact_url(url)}")

    def populate(tmp: Path) -> str:
        git.checkout(tmp, commit)
        return "."

    return FetchedSource(path=assemble(final, identity, populate), identity=identity)


def git_identity(url: str, commit: str) -> dict[str, str]:
    return {"kind": "git", "location": redact_url(url), "commit": commit}


def local_identity(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """A local tree's identity: its path, and when it is in a git work tree the commit checked
    out and whether anything under it differs from that commit."""
    identity = {"kind": "local", "location": str(path)}
    if not any((p / ".git").exists() for p in (path, *path.parents)):
        return identity  # not in a git work tree; skip starting git at all
    git_env = {**proc.git_env(env), "GIT_OPTIONAL_LOCKS": "0"}  # status must not take the index lock
    try:
        head = proc.run(["git", "-C", path, "rev-parse", "HEAD"], env=git_env).output
        status = proc.run(["git", "-C", path, "status", "--porcelain", "--", "."], env=git_env).output
    except (CommandFailed, ProgramNotFound):
        return identity  # an empty repository, or no git: the path alone identifies it
    commits = [line for line in head.split() if FULL_SHA.match(line)]
    if not commits:
        return identity
    changed = [line for line in status.splitlines() if re.match(r"[ MADRCUT?!]{2} ", line)]
    identity["commit"] = commits[-1]
    identity["dirty"] = "true" if changed else "false"
    return identity


@dataclass(frozen=True, kw_only=True)
class _Git:
    """git commands against one remote, each network step retried and classified."""

    url: str
    spec: BackendSpec
    env: Mapping[str, str]
    policy: RetryPolicy

    def _argv(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        timeout = int(max(1.0, net_timeout(self.env)))
        config = [
            # A stalled transfer (below 1 kB/s for the timeout) fails instead of hanging forever.
            "http.lowSpeedLimit=1000",
            f"http.lowSpeedTime={timeout}",
            "advice.detachedHead=false",
        ]
        if self.url.lower().startswith("file://"):
            # git >= 2.38.1 refuses file:// submodules (CVE-2022-39253) unless allowed; the
            # user already pointed us at this local repository, so its submodules are trusted too.
            config.append("protocol.file.allow=always")
        argv: list[str | os.PathLike[str]] = ["git"]
        for item in config:
            argv += ["-c", item]
        return [*argv, *args]

    def _run(self, *args: str | os.PathLike[str]) -> proc.Completed:
        try:
            return proc.run(self._argv(*args), env=proc.git_env(self.env))
        except CommandFailed as exc:
            raise classify_failure(exc, url=self.url, spec=self.spec) from exc

    def _net(self, what: str, *args: str | os.PathLike[str]) -> proc.Completed:
        return with_retries(
            lambda: self._run(*args),
            policy=self.policy,
            is_transient=is_transient,
            what=what,
        )

    def resolve(self, ref: str | None) -> str:
        """The commit a branch, tag or the remote HEAD names now."""
        wanted = ref or "HEAD"
        # The second pattern asks for the peeled line of an annotated tag (the commit it names).
        listing = self._net(f"looking up {wanted}", "ls-remote", self.url, wanted, f"{wanted}^{{}}").output
        found: dict[str, str] = {}
        for line in listing.splitlines():
            sha, _, name = line.partition("\t")
            if FULL_SHA.match(sha):
                found[name.strip()] = sha
        # An annotated tag is listed twice; the peeled (^{}) line is the commit it points to.
        for name in (
            f"refs/tags/{wanted}^{{}}",
            f"refs/tags/{wanted}",
            f"refs/heads/{wanted}",
            f"{wanted}^{{}}",
            wanted,
        ):
            if name in found:
                return found[name]
        raise BadInput(
            f"{redact_url(self.url)} has no branch or tag named {wanted!r}",
            next_step="use a full 40-character commit, a tag or a branch name "
            "(an abbreviated commit cannot be fetched)",
        )

    def checkout(self, tmp: Path, commit: str) -> None:
        self._run("init", "-q", tmp)
        self._run("-C", tmp, "remote", "add", "origin", self.url)
        target = "FETCH_HEAD"
        try:
            self._net(
                f"fetching {commit[:12]}", "-C", tmp, "fetch", "-q", "--depth", "1", "--no-tags", "origin", commit
            )
        except BadInput as err:
            if not _refused_by_server(err):
                raise
            # Some servers will not serve a commit by its id; fetch everything and look for it.
            ui.debug("the server refused a shallow fetch of the commit; fetching the full history")
            self._net("fetching the full history", "-C", tmp, "fetch", "-q", "--tags", "origin")
            target = commit
        try:
            self._run("-C", tmp, "checkout", "-q", "--detach", target)
        except BadInput as err:
            raise BadInput(
                f"{redact_url(self.url)} has no commit {commit}",
                next_step="check the commit id, or use a tag or branch name",
            ) from err
        head = self._run("-C", tmp, "rev-parse", "HEAD").output.split()
        if not head or head[-1] != commit:
            got = head[-1] if head else "nothing"
            raise UnclassifiedError(
                f"git checked out {got} instead of {commit} from {redact_url(self.url)}",
                next_step="rerun; if it persists, check the commit out yourself and use that directory",
            )
        if (tmp / ".gitmodules").is_file():
            ui.say("fetching submodules")
            submodules = ("-C", tmp, "submodule", "update", "--init", "--recursive")
            try:
                self._net("fetching submodules", *submodules, "--depth", "1")
            except BadInput as err:
                if not _refused_by_server(err):
                    raise
                ui.debug("a submodule commit is not fetchable shallowly; fetching full submodule history")
                self._net("fetching submodules", *submodules)


def _refused_by_server(err: SuiteError) -> bool:
    cause = err.__cause__
    return isinstance(cause, CommandFailed) and server_refused_commit(cause.output_tail)
