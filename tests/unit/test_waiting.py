"""minikubenet/waiting.py: the one poll-until-deadline loop; private_files.write_atomic."""

from __future__ import annotations

import time

import pytest

from minikubenet.waiting import WaitTimeout, wait_until


def test_returns_the_first_truthy_answer():
    answers = iter([0, None, "", "yes", "later"])
    assert wait_until(lambda: next(answers), timeout=5, interval=0) == "yes"


def test_gives_back_the_last_answer_at_the_deadline():
    started = time.monotonic()
    assert wait_until(lambda: [], timeout=0.2, interval=0.05) == []
    assert 0.2 <= time.monotonic() - started < 2


def test_asks_once_more_at_the_deadline():
    calls = []

    def check():
        calls.append(time.monotonic())
        return len(calls) >= 2  # true on the second call, which is at the deadline

    assert wait_until(check, timeout=0.1, interval=10) is True


def test_names_what_it_waited_for():
    with pytest.raises(WaitTimeout, match="the agent's socket: not after 0.1s"):
        wait_until(lambda: False, timeout=0.1, what="the agent's socket")


def test_errors_of_the_check_propagate():
    def check():
        raise ValueError("broken")

    with pytest.raises(ValueError):
        wait_until(check, timeout=1)


# -- the one atomic writer (minikubenet/private_files.py) ------------------------------------------


def test_write_atomic_replaces_with_the_mode_and_leaves_no_temp_file(tmp_path):
    import os
    import stat

    from minikubenet.private_files import write_atomic

    path = tmp_path / "state.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_atomic(str(path), '{"new": 1}')
    assert path.read_text() == '{"new": 1}'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    write_atomic(str(path), b"#!/bin/sh\n", 0o755)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    import os

    from minikubenet.private_files import write_atomic

    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(str(path), 12345)  # not bytes: fails before the rename
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]
