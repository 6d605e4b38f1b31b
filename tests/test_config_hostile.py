"""Hostile config files: alias bombs, loops, deep nesting, huge or non-UTF-8 files, folders, pipes, floods of
mistakes. Each ends in one short, exact error (exit 2, no traceback) within a bounded time and memory."""

from __future__ import annotations

import logging
import os
import signal
import textwrap
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import MINIMAL_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reportgen import config, prepare
from reportgen.cli import main
from reportgen.config import load_config
from reportgen.errors import ConfigError

GOOD = MINIMAL_CONFIG
GOOD_LINES = GOOD.count("\n")


def _write(tmp_path: Path, text: str | bytes, name: str = "c.yaml") -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def _deadline(seconds: float):
    """Fail (instead of hanging or eating all memory) when the block runs longer than ``seconds``."""

    def expired(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of an in-process ``reportgen`` (an uncaught exception fails the test by itself)."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _bomb(levels: int = 9, width: int = 9) -> str:
    """"Billion laughs": ``width ** levels`` values in about a kilobyte."""
    text = "a: &a [" + ", ".join(["lol"] * width) + "]\n"
    for prev, name in zip("abcdefghijklmnop", "bcdefghijklmnop"[: levels - 1], strict=False):
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]\n"
    return text


# --- item 6: alias bombs, loops, depth ------------------------------------------------------------------------------


def test_alias_bomb_fails_fast_at_the_alias_that_expands_too_far(tmp_path, capsys):
    path = _write(tmp_path, GOOD + _bomb())  # 9^9 = 387,420,489 values in 364 bytes
    assert path.stat().st_size < 600
    start = time.perf_counter()
    with _deadline(10):
        code, err = _cli(capsys, "validate", str(path))
    elapsed = time.perf_counter() - start
    # cumulative values: a..e hold 74,732; f's first *e crosses 100,000
    line_f = GOOD_LINES + 6
    assert code == 2 and err == (
        f"error: {path}:{line_f}: f[0]: the config holds more than 100,000 values once the alias *e is expanded "
        "(an alias repeats its anchor's value)\n")
    assert elapsed < 3.0  # measured 0.2 s; unbounded, it grew past 2.2 GB in 30 s


def test_alias_bomb_memory_stays_small(tmp_path):
    path = _write(tmp_path, GOOD + _bomb(levels=12))
    tracemalloc.start()
    try:
        with _deadline(20), pytest.raises(ConfigError) as info:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "more than 100,000 values" in str(info.value)
    assert peak < 80e6, f"peak {peak / 1e6:.1f} MB"  # 100,000 values and their line numbers


def test_an_alias_inside_its_own_anchor_is_a_loop_not_a_crash(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "title: &x [1, *x]\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == (
        f"error: {path}:{GOOD_LINES + 1}: title[1]: the alias *x is used inside the value it names (a loop)\n")
    path = _write(tmp_path, GOOD + "cams: &c\n  params:\n    gradcam: *c\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and "cams.params.gradcam: the alias *c is used inside the value it names (a loop)" in err


@pytest.mark.parametrize("levels", [70, 400, 5000])
def test_deep_nesting_is_a_config_error(tmp_path, capsys, levels):
    path = _write(tmp_path, GOOD + "title: " + "[" * levels + "]" * levels + "\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err.count("\n") == 1 and f"{path}:{GOOD_LINES + 1}: " in err
    assert "nested more than 64 levels deep" in err or "maximum nesting depth" in err  # ours, or libyaml's at 1000


def test_deep_nesting_through_a_chain_of_aliases_is_a_config_error(tmp_path, capsys):
    chain = "".join(f"a{i + 1}: &a{i + 1} [*a{i}]\n" for i in range(600))  # each alias one level deeper
    path = _write(tmp_path, GOOD + "a0: &a0 [1]\n" + chain)
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err.count("\n") == 1
    assert "nested more than 64 levels deep once the alias *a" in err


def test_many_plain_values_are_refused_while_composing(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "filters:\n  channels: [" + ",".join(["1"] * 100_001) + "]\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == f"error: {path}:{GOOD_LINES + 2}: the config holds more than 100,000 values\n"


def test_a_key_that_is_a_list_or_mapping_is_named(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "? [a, b]\n: 1\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == f"error: {path}:{GOOD_LINES + 1}: a key must be plain text, got a list\n"
    path = _write(tmp_path, GOOD + "cams:\n  ? {a: 1}\n  : 1\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == f"error: {path}:{GOOD_LINES + 2}: cams: a key must be plain text, got a mapping\n"


# --- bounded error output --------------------------------------------------------------------------------------


def test_a_flood_of_mistakes_prints_twenty_and_a_count(tmp_path, capsys, monkeypatch):
    searched = []
    real = config._suggest
    monkeypatch.setattr(config, "_suggest", lambda word, *a: searched.append(word) or real(word, *a))
    names = ", ".join(f"m{i}" for i in range(5000))
    path = _write(tmp_path, GOOD + f"cams:\n  methods: [{names}]\n  layers: [features.5]\n")
    code, err = _cli(capsys, "validate", str(path))
    lines = err.splitlines()
    assert code == 2 and len(lines) == 21
    assert lines[0].startswith(f"error: {path}:{GOOD_LINES + 2}: cams.methods[0]: unknown name 'm0'; expected one of")
    assert lines[-1] == f"error: {path}: ... and 4980 more problems"
    assert len(searched) == 20  # close matches are looked for only for the problems shown


def test_long_values_and_keys_are_shortened_in_messages(tmp_path, capsys):
    long = "x" * 5000
    path = _write(tmp_path, GOOD + f"report:\n  colormap: {long}\n  ? {long}\n  : 1\ntitle: [{long}, {long}]\n")
    code, err = _cli(capsys, "validate", str(path))
    lines = err.splitlines()
    assert code == 2 and len(lines) == 3 and all(len(line) < 300 for line in lines), lines
    short = "'" + "x" * 78 + "…"
    assert f"{path}:{GOOD_LINES + 5}: title: expected a string, got list ['xxxx" in err
    assert f"report.colormap: unknown colormap {short}" in err
    assert f"report.{'x' * 79}…: unknown key" in err


def test_unknown_layers_past_the_shown_twenty_are_counted_not_searched(tmp_path, capsys, monkeypatch):
    searched = []
    real = prepare.close_matches
    monkeypatch.setattr(prepare, "close_matches", lambda *a, **k: searched.append(a[0]) or real(*a, **k))
    names = ", ".join(f"layer{i}" for i in range(300))
    path = _write(tmp_path, GOOD + f"feature_maps:\n  layers: [{names}]\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and len(err.splitlines()) == 21 and err.endswith("... and 280 more problems\n")
    assert len(searched) == 20


def test_config_error_keeps_twenty_problems_and_cuts_long_lines():
    exc = ConfigError([f"c.yaml:{i}: k: bad" for i in range(50)] + ["y" * 5000], source="c.yaml")
    assert exc.problems[:20] == [f"c.yaml:{i}: k: bad" for i in range(20)]
    assert exc.problems[20:] == ["c.yaml: ... and 31 more problems"] and exc.more == 31
    exc = ConfigError("z" * 5000)
    assert exc.problems == ["z" * 999 + "…"]
    assert ConfigError(["a"], more=1).problems == ["a", "... and 1 more problem"]


# --- item 7: the file itself ------------------------------------------------------------------------------------


def test_latin1_config_is_named_with_the_byte_and_line(tmp_path, capsys):
    path = _write(tmp_path, (GOOD + "title: café\n").encode("latin-1"))
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == (
        f"error: {path}: not UTF-8 text (byte 0xE9 at line {GOOD_LINES + 1}); save the file as UTF-8\n")
    path = _write(tmp_path, "title: x\n".encode("utf-16"))
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and "not UTF-8 text (byte 0xFF at line 1); it looks like UTF-16" in err


def test_a_character_yaml_refuses_is_named_with_its_line(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "title: bell\x07\n")
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err.startswith(
        f"error: {path}:{GOOD_LINES + 1}: YAML syntax error: character U+0007 is not allowed")


def test_a_config_over_one_megabyte_is_refused_with_its_size(tmp_path, capsys):
    path = _write(tmp_path, GOOD + "#" * (1_000_001 - len(GOOD) - 1) + "\n")
    assert path.stat().st_size == 1_000_001
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == (
        f"error: {path}: the config is 1,000,001 bytes; the limit is 1,000,000 bytes (is it the right file?)\n")
    path.write_text(GOOD + "#" * (1_000_000 - len(GOOD) - 1) + "\n", encoding="utf-8")
    load_config(path)  # exactly the limit is fine


def test_validation_time_grows_linearly_with_the_config(tmp_path):
    """CPU time for 4x the names stays well under the 16x a quadratic step would take (it was quadratic)."""

    def cpu_seconds(n: int) -> float:
        names = "".join(f"    - l{i}\n" for i in range(n))
        path = _write(tmp_path, GOOD + f"kernels:\n  layers:\n{names}bogus: 1\n", name=f"c{n}.yaml")
        start = time.process_time()
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.problems == [f"{path}:{GOOD_LINES + 3 + n}: bogus: unknown key"]
        return time.process_time() - start

    cpu_seconds(1000)  # warm up imports
    small, large = cpu_seconds(10_000), cpu_seconds(40_000)
    assert large < 8 * small + 0.5, (small, large)


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n", "\ufeff"])
def test_empty_config(tmp_path, capsys, text):
    path = _write(tmp_path, text)
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == f"error: {path}:1: the config is empty\n"


def test_a_byte_order_mark_is_accepted_and_lines_still_count(tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())
    assert load_config(path).model.name == "tinynets:tiny_cnn"
    path = _write(tmp_path, b"\xef\xbb\xbf" + (GOOD + "colour: red\n").encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}:{GOOD_LINES + 1}: colour: unknown key"]


def test_a_folder_a_pipe_and_a_missing_file(tmp_path, capsys):
    folder = tmp_path / "c.yaml"
    folder.mkdir()
    code, err = _cli(capsys, "validate", str(folder))
    assert code == 2 and err == f"error: {folder}: is a folder, not a config file\n"
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with _deadline(10):  # opening a pipe with no writer would block
        code, err = _cli(capsys, "validate", str(fifo))
    assert code == 2 and err == f"error: {fifo}: not a regular file (a pipe, socket or device); give a YAML file\n"
    code, err = _cli(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"error: {tmp_path / 'nope.yaml'}: config file not found\n"


def test_an_unreadable_config_is_a_config_error(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, GOOD)
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    code, err = _cli(capsys, "validate", str(path))
    assert code == 2 and err == f"error: {path}: cannot read the config: Permission denied\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_config_of_mode_000_is_a_config_error(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    path.chmod(0)
    try:
        code, err = _cli(capsys, "validate", str(path))
    finally:
        path.chmod(0o644)
    assert code == 2 and err == f"error: {path}: cannot read the config: Permission denied\n"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_a_config_error_or_a_config(tmp_path, raw):
    path = _write(tmp_path, raw)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(f"{path}:") for p in exc.problems)


# --- item 14b: parameters for a method the config does not run ----------------------------------------------------


def test_params_for_a_method_not_chosen_are_a_warning_and_still_checked(tmp_path, caplog):
    cams = textwrap.dedent("""\
        cams:
          methods: [gradcam]
          layers: [features.5]
          params:
            scorecam: {batch_size: 32}
        """)
    path = _write(tmp_path, GOOD + cams)
    with caplog.at_level(logging.WARNING, logger="reportgen.config"):
        cfg = load_config(path)
    assert cfg.cams.methods == ("gradcam",) and "scorecam" not in cfg.cams.params
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:{GOOD_LINES + 5}: cams.params.scorecam: parameters for scorecam, which is not in cams.methods: "
        "checked, then ignored"]
    # a typo in an unused block is still an error, and so is a method that does not exist
    path = _write(tmp_path, GOOD + cams.replace("batch_size: 32", "batch_sise: 32") + "    gradcan: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == sorted([
        f"{path}:{GOOD_LINES + 5}: cams.params.scorecam.batch_sise: unknown key; did you mean 'batch_size'?",
        f"{path}:{GOOD_LINES + 6}: cams.params.gradcan: unknown key; did you mean 'gradcam'?",
    ])


def test_validate_succeeds_with_params_for_a_method_not_chosen(tmp_path, capsys, caplog):
    cams = "cams:\n  methods: [gradcam]\n  layers: [features.5]\n  params:\n    smoothgrad: {samples: 4}\n"
    path = _write(tmp_path, GOOD + cams)
    with caplog.at_level(logging.WARNING, logger="reportgen.config"):
        code, _ = _cli(capsys, "validate", str(path))
    assert code == 0
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(
        f"{path}:{GOOD_LINES + 5}: cams.params.smoothgrad: parameters for smoothgrad, which is not in cams.methods")
