"""The operating-system layer against real files and real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from assft.runtime import portable

HOLDER = textwrap.dedent(
    """
    import sys, time
    from assft.runtime.portable import try_lock
    held = try_lock(sys.argv[1])
    print("locked" if held is not None else "refused", flush=True)
    time.sleep(600)
    """
)


def _wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_exclusive_lock_excludes_every_other_open(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held = portable.try_lock(path)
    assert held is not None and path.exists()
    try:
        assert portable.try_lock(path) is None  # another open, even in this process
        assert portable.try_lock(path, shared=True, create=False) is None
    finally:
        portable.unlock(held)
    assert held.closed
    again = portable.try_lock(path)
    assert again is not None
    portable.unlock(again)


def test_shared_locks_admit_each_other_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.touch()
    first = portable.try_lock(path, shared=True, create=False)
    assert first is not None
    try:
        if os.name != "nt":  # Windows without pywin32 takes an exclusive lock for a shared one
            second = portable.try_lock(path, shared=True, create=False)
            assert second is not None
            portable.unlock(second)
        assert portable.try_lock(path) is None
    finally:
        portable.unlock(first)
    with pytest.raises(FileNotFoundError):
        portable.try_lock(tmp_path / "missing.lock", shared=True, create=False)


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    command = [sys.executable, "-c", HOLDER, str(path)]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert portable.try_lock(path) is None
        assert portable.try_lock(path, shared=True) is None
    finally:
        holder.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no clean-up runs
        holder.wait(10)
        holder.stdout.close()
    probe = portable.try_lock(path, shared=True)
    assert probe is not None
    portable.unlock(probe)


def test_a_process_is_known_by_its_pid_and_start_time() -> None:
    me = os.getpid()
    started = portable.process_start_time(me)
    assert isinstance(started, float)
    assert portable.process_start_time(me) == started  # the same on every reading
    assert portable.process_alive(me) and portable.process_alive(me, started)
    # the same pid with another start time: a later process that reused the pid
    assert not portable.process_alive(me, started + 1)
    assert not portable.process_alive(me, started - 0.01)
    for pid in (0, -1):
        assert not portable.process_alive(pid)


def test_an_ended_process_is_not_alive(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = portable.process_start_time(child.pid)
    assert portable.process_alive(child.pid, started)
    child.kill()
    # Ended but not reaped yet (a zombie on POSIX): no longer alive.
    assert _wait_until(lambda: not portable.process_alive(child.pid, started))
    assert portable.wait_for_exit(child.pid, started, timeout=1.0)
    assert child.wait(10) != 0  # the status was left for its parent to read
    assert not portable.process_alive(child.pid, started)


def test_wait_for_exit_times_out_on_a_running_process() -> None:
    started = time.monotonic()
    assert not portable.wait_for_exit(os.getpid(), None, timeout=0.3)
    assert time.monotonic() - started >= 0.3


def _tree(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    """A child that ignores SIGTERM and started a grandchild (in its own session) that does too."""
    script = tmp_path / "tree.py"
    script.write_text(
        textwrap.dedent(
            """
        import json, signal, subprocess, sys, time
        from assft.runtime.portable import start_process
        ignore = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)"
        )
        grandchild = start_process(
            [sys.executable, "-c", ignore], stdout=subprocess.PIPE, text=True
        )
        grandchild.stdout.readline()
        if hasattr(signal, "SIGTERM"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"grandchild": grandchild.pid}), flush=True)
        time.sleep(600)
        """
        )
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = json.loads(child.stdout.readline())["grandchild"]
    return child, grandchild


def test_end_process_tree_ends_the_grandchildren_too(tmp_path: Path) -> None:
    child, grandchild = _tree(tmp_path)
    try:
        tree = portable.ProcessTree(child.pid)
        assert tree.pids[0] == child.pid and grandchild in tree.pids
        assert portable.process_alive(grandchild)
        started = time.monotonic()
        assert portable.end_process_tree(child.pid, grace=0.5) is True  # both ignore SIGTERM
        assert time.monotonic() - started >= 0.5
        assert not portable.process_alive(child.pid) and not portable.process_alive(grandchild)
        assert tree.running() == []
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()


def test_a_tree_whose_root_has_another_start_time_is_left_alone(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = portable.process_start_time(child.pid)
        assert started is not None
        assert portable.ProcessTree(child.pid, started + 1).pids == []  # a reused pid: not ours
        assert portable.end_process_tree(child.pid, start_time=started + 1, grace=0.1) is False
        assert portable.process_alive(child.pid, started)
    finally:
        child.kill()
        child.wait(10)


def test_start_process_gives_the_child_a_group_of_its_own(tmp_path: Path) -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    child = portable.start_process(sleep, detach=True)
    try:
        if os.name != "nt":
            assert os.getsid(child.pid) == child.pid and os.getpgid(child.pid) == child.pid
        assert portable.process_alive(child.pid)
    finally:
        portable.end_process_tree(child.pid, grace=5)
        child.wait(10)
    assert not portable.process_alive(child.pid)


def test_peak_memory_and_umask() -> None:
    assert portable.peak_memory_mb() > 5  # an interpreter with pytest loaded
    mask = os.umask(0o022)
    os.umask(mask)
    assert portable.process_umask() == mask


def test_memory_freed_in_threads_goes_back_to_the_system() -> None:
    """glibc keeps what threads free in their arenas (a ranking grew 0.27 MB a scan that way);
    release_freed_memory hands it back. Each thread keeps its last block, so that free() alone
    cannot shrink its heap."""
    import threading

    import psutil

    from assft.runtime.portable import release_freed_memory

    kept: list[bytes] = []

    def churn() -> None:
        blocks = [bytes(4000) for _ in range(20000)]
        kept.append(blocks[-1])
        del blocks

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before = psutil.Process().memory_info().rss
    assert release_freed_memory(min_interval_s=0)  # Linux with glibc here
    assert before - psutil.Process().memory_info().rss > 100 * 2**20  # of the 320 MB freed
    assert not release_freed_memory(min_interval_s=60)  # at most once a minute: not again now
