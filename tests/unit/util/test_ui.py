from __future__ import annotations

import io
import sys

import pytest

from bitnet_crossval.util import ui

# What colour and progress output depend on, besides whether stderr is a terminal.
UI_VARS = (
    "NO_COLOR",
    "FORCE_COLOR",
    "TERM",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "COLUMNS",
    "BITNET_PROGRESS_INTERVAL",
)


class TerminalStream(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts quiet, without colour settings and without a cached rich console."""
    for name in UI_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ui, "_verbose", False)
    monkeypatch.setattr(ui, "_console", None)


def use_terminal(monkeypatch: pytest.MonkeyPatch) -> TerminalStream:
    """Make stderr a terminal; called in the test body, since pytest's capture replaces
    sys.stderr between a fixture's setup and the test."""
    stream = TerminalStream()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_say_writes_one_line_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    ui.say("hello there")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "hello there\n"


@pytest.mark.parametrize("level", ["info", "ok", "warn", "error"])
def test_every_level_but_debug_is_shown_without_verbose(level: ui.Level, capsys: pytest.CaptureFixture[str]) -> None:
    ui.say("a status line", level)
    assert capsys.readouterr().err == "a status line\n"


def test_debug_lines_only_with_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    ui.debug("hidden detail")
    ui.say("hidden too", "debug")
    assert capsys.readouterr().err == ""
    ui.set_verbose(True)
    assert ui.is_verbose()
    ui.debug("shown detail")
    assert capsys.readouterr().err == "shown detail\n"
    ui.set_verbose(False)
    ui.debug("hidden again")
    assert capsys.readouterr().err == ""


def test_warn_prefixes_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    ui.warn("disk almost full")
    assert capsys.readouterr().err == "warning: disk almost full\n"


def test_not_a_terminal_means_no_colour(capsys: pytest.CaptureFixture[str]) -> None:
    assert not ui.use_color()
    ui.say("failed", "error")
    assert "\x1b" not in capsys.readouterr().err


def test_a_terminal_gets_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = use_terminal(monkeypatch)
    assert ui.use_color()
    ui.say("failed", "error")
    ui.say("fine", "ok")
    ui.say("plain")
    lines = terminal.getvalue().splitlines()
    assert lines[0].startswith("\x1b[31m") and lines[0].endswith("\x1b[0m") and "failed" in lines[0]
    assert lines[1].startswith("\x1b[32m") and "fine" in lines[1]
    assert lines[2] == "plain"  # info has no style, so no escape codes at all


def test_a_dumb_terminal_gets_no_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = use_terminal(monkeypatch)
    monkeypatch.setenv("TERM", "dumb")
    assert not ui.use_color()
    ui.say("failed", "error")
    assert terminal.getvalue() == "failed\n"


@pytest.mark.parametrize("value", ["1", "true", "0"])
def test_no_color_wins_over_a_terminal_and_force_color(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    terminal = use_terminal(monkeypatch)
    monkeypatch.setenv("NO_COLOR", value)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not ui.use_color()
    ui.say("failed", "error")
    assert terminal.getvalue() == "failed\n"


def test_an_empty_no_color_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    use_terminal(monkeypatch)
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: only a non-empty value counts
    assert ui.use_color()


def test_force_color_colours_a_non_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert ui.use_color()
    ui.say("careful", "warn")
    assert capsys.readouterr().err == "\x1b[33mcareful\x1b[0m\n"


def test_an_empty_force_color_is_ignored(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "")
    assert not ui.use_color()


def test_progress_on_a_non_terminal_prints_one_plain_line(capsys: pytest.CaptureFixture[str]) -> None:
    with ui.progress("building llama.cpp", total=10) as bar:
        bar.advance_to(3, 10)
        bar.advance_to(10)
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "building llama.cpp ...\n"


def test_progress_on_a_non_terminal_propagates_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="boom"), ui.progress("downloading", unit="bytes"):
        raise RuntimeError("boom")
    assert capsys.readouterr().err == "downloading ...\n"


def test_flush_all_survives_a_closed_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    ui.flush_all()  # no ValueError from the closed stream
