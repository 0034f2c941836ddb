"""Every call that differs between Windows, macOS and Linux, in one module.

The engine and the Slicer module go through here for file locks, starting a process in a group
of its own, telling whether a process still runs, ending a process tree, peak memory and the
umask. Locks come from ``portalocker`` and processes from ``psutil``, which hide most of the
differences; the few branches left are small and marked.

Only the standard library, ``psutil`` and ``portalocker`` are imported here: the Slicer module
imports this before PyTorch is installed.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import portalocker
import psutil

__all__ = [
    "ProcessTree",
    "close_folder",
    "end_process_tree",
    "open_folder",
    "peak_memory_mb",
    "process_alive",
    "process_start_time",
    "process_umask",
    "replace_in_folder",
    "start_process",
    "try_lock",
    "unlock",
    "wait_for_exit",
]

_LINUX = sys.platform.startswith("linux")
_POLL_S = 0.05
# Start times are rounded to the clock tick (1/100 s on Linux); two records of one process agree
# to well within half a tick, a later process reusing the pid differs by at least one.
_SAME_START_S = 0.005


# file locks --------------------------------------------------------------------------------


def try_lock(path: str | Path, *, shared: bool = False, create: bool = True) -> IO[bytes] | None:
    """Open ``path`` and lock it without waiting; the returned open file holds the lock.

    The lock is the operating system's (``flock`` on POSIX; ``msvcrt.locking`` or ``LockFileEx``
    on Windows). It belongs to the open file: another open of the same file conflicts with it,
    in this process or another, and the kernel drops it when the file is closed or its process
    ends, however it ends (SIGKILL, a crash, TerminateProcess).

    Args:
        path: The lock file.
        shared: Take a shared lock, which only an exclusive lock excludes (a probe that must
            not block other probes). Windows without ``pywin32`` has no shared locks: an
            exclusive one, held as briefly, is taken instead.
        create: Create a missing lock file (else ``FileNotFoundError``).

    Returns:
        The open file (release it with :func:`unlock`), or None when a conflicting lock is held.
    """
    stream = open(path, "a+b" if create else "rb")  # noqa: SIM115 - the caller closes it in unlock
    flags = portalocker.LockFlags
    exclusive = flags.EXCLUSIVE | flags.NON_BLOCKING
    try:
        try:
            portalocker.lock(stream, flags.SHARED | flags.NON_BLOCKING if shared else exclusive)
        except ImportError:  # Windows: shared locks need pywin32
            portalocker.lock(stream, exclusive)
    except portalocker.exceptions.LockException:
        stream.close()
        return None
    except BaseException:
        stream.close()
        raise
    return stream


def unlock(stream: IO[bytes]) -> None:
    """Release a lock taken by :func:`try_lock` and close its file."""
    try:
        with contextlib.suppress(portalocker.exceptions.LockException):
            portalocker.unlock(stream)
    finally:
        stream.close()


# processes ---------------------------------------------------------------------------------


def start_process(
    command: Sequence[str], *, detach: bool = False, **options: Any
) -> subprocess.Popen[Any]:
    """Start a process in a process group of its own.

    Signals meant for this process's group (Ctrl-C in a terminal) do not reach it, and its tree
    can be ended without touching this one.

    Args:
        command: The program and its arguments.
        detach: Also give it no console of its own on Windows (a background job); on POSIX every
            process started here leads a new session, which outlives the shell that started it.
        **options: Passed to :class:`subprocess.Popen` (stdout, env, cwd...).
    """
    if sys.platform == "win32":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        if detach:
            flags |= subprocess.DETACHED_PROCESS
        options["creationflags"] = options.get("creationflags", 0) | flags
    else:
        options["start_new_session"] = True
    return subprocess.Popen(list(command), **options)


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started; with the pid it names one process, not a later reuse of it.

    Returns:
        Seconds since boot on Linux (so that a change of the clock does not change it), since
        the epoch elsewhere; None when there is no such process.
    """
    try:
        boot = psutil.boot_time() if _LINUX else 0.0  # read first: psutil < 6 adds a cached copy
        return round(psutil.Process(pid).create_time() - boot, 2)
    except psutil.Error:
        return None


def _same_start(process: psutil.Process, start_time: float | None) -> bool:
    if start_time is None:
        return True
    current = process_start_time(process.pid)
    return current is not None and abs(current - start_time) < _SAME_START_S


def _running(process: psutil.Process) -> bool:
    """Whether a process object still names a live process (a zombie has ended)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process: it exists
        return True


def process_alive(pid: int, start_time: float | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie) that started at ``start_time``.

    Args:
        pid: The process id.
        start_time: What :func:`process_start_time` said of it; None checks the pid alone.
    """
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return _running(process) and _same_start(process, start_time)


def wait_for_exit(pid: int, start_time: float | None, timeout: float) -> bool:
    """Poll until the process has ended (without reaping it); True if it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while process_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _leads_group(pid: int) -> bool:
    if sys.platform == "win32":
        return False
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


class ProcessTree:
    """A process and everything below it, listed when made (and on :meth:`refresh`).

    The list is taken before anything is ended: a child whose parent has ended is re-parented
    and could no longer be found. Each entry remembers its process's start time, so a pid reused
    meanwhile by another process is never signalled.

    Args:
        pid: The root process.
        start_time: Its :func:`process_start_time`; a root that does not match is not listed.
    """

    def __init__(self, pid: int, start_time: float | None = None) -> None:
        self.pid = pid
        self._processes: dict[int, psutil.Process] = {}
        self._group = False
        self._start = process_start_time(pid)
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        if not _running(root) or not _same_start(root, start_time):
            return
        self._processes[pid] = root
        self._group = _leads_group(pid)  # POSIX: its process group is ended too
        self.refresh()

    def __repr__(self) -> str:
        return f"ProcessTree({self.pid}, {sorted(self._processes)})"

    @property
    def pids(self) -> list[int]:
        """Every listed process id, the root first."""
        return list(self._processes)

    def refresh(self) -> None:
        """Add the processes started below the listed ones since the last listing."""
        for process in list(self._processes.values()):
            try:
                children = process.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                self._processes.setdefault(child.pid, child)

    def running(self) -> list[int]:
        """The listed processes that still run."""
        return [pid for pid, process in self._processes.items() if _running(process)]

    def end(self, grace: float = 5.0) -> bool:
        """End every listed process that still runs.

        Each gets ``terminate()`` first: SIGTERM on POSIX, which the engine answers by stopping
        at its next safe point (:mod:`assft.runtime.cancellation`); on Windows that is already a
        hard stop. Whatever still runs after ``grace`` seconds is killed, and on POSIX so is
        whatever is left in the root's process group.

        Returns:
            Whether any process had to be killed.
        """
        alive = [p for p in self._processes.values() if _running(p)]
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.terminate()  # psutil checks the start time: a reused pid is left alone
        deadline = time.monotonic() + grace
        while any(_running(p) for p in alive) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        survivors = [p for p in alive if _running(p)]
        for process in survivors:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self._end_group()
        deadline = time.monotonic() + 5.0
        while any(_running(p) for p in survivors) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return bool(survivors)

    def _end_group(self) -> None:
        """POSIX: kill what is left of the root's process group (helpers re-parented early)."""
        if not self._group or sys.platform == "win32":
            return
        current = process_start_time(self.pid)
        if current is not None and self._start is not None:
            if abs(current - self._start) >= _SAME_START_S:
                return  # the pid now names another process, which may lead a group of that id
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)


def end_process_tree(pid: int, *, start_time: float | None = None, grace: float = 5.0) -> bool:
    """End a process and everything below it (see :meth:`ProcessTree.end`).

    Returns:
        Whether any process had to be killed.
    """
    return ProcessTree(pid, start_time).end(grace)


# this process ------------------------------------------------------------------------------


def prefer_offscreen_rendering() -> None:
    """Linux without a display: VTK renders off-screen through EGL (Mesa's software renderer
    where there is no GPU). Windows and macOS render without a display as they are."""
    if _LINUX and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def peak_memory_mb() -> float:
    """This process's peak resident memory in MiB, since it started its program."""
    if sys.platform == "win32":
        return float(psutil.Process().memory_info().peak_wset) / 2**20
    if _LINUX:
        # VmHWM belongs to this program: ru_maxrss would carry over the parent's peak across
        # fork and exec.
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # here: the module exists on Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


_MALLOC_TRIM: Any = None
_LAST_TRIM = -math.inf


def release_freed_memory(min_interval_s: float = 2.0) -> bool:
    """Hand the memory this process has freed back to the system, where the C library keeps it.

    On Linux, glibc keeps freed blocks in one arena per thread that has allocated (PyTorch's
    threads do), and the resident size of a ranking grew by 0.27 MB a scan that way: 240 MB
    over 1,000 scans, none of it in use (BENCHMARKS.md, "Ranking a large pool").
    ``malloc_trim(0)`` returns it. A trim takes tens of milliseconds, so it runs at most once
    every ``min_interval_s`` seconds (a call sooner does nothing). Elsewhere (another C library,
    Windows, macOS) this does nothing. Returns whether memory was trimmed.
    """
    global _MALLOC_TRIM, _LAST_TRIM
    if not _LINUX or time.monotonic() - _LAST_TRIM < min_interval_s:
        return False
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (musl, for one)
            _MALLOC_TRIM = False
    if _MALLOC_TRIM is False:
        return False
    _MALLOC_TRIM(0)
    _LAST_TRIM = time.monotonic()
    return True


def process_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Setting it (the only portable way to read it) is not thread-safe: another thread creating a
    file meanwhile would get mode 0o666.
    """
    if _LINUX:
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_folder(path: str | Path) -> int | None:
    """A descriptor holding a folder open, so that files can be renamed into that very folder
    even when its path is later replaced (:func:`replace_in_folder`); None where the system
    cannot rename relative to an open folder (Windows)."""
    if os.replace not in os.supports_dir_fd or not hasattr(os, "O_DIRECTORY"):
        return None
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def replace_in_folder(folder: int, source: str, destination: str) -> None:
    """``os.replace`` of two names inside the folder ``folder`` holds open (:func:`open_folder`)."""
    os.replace(source, destination, src_dir_fd=folder, dst_dir_fd=folder)


def close_folder(folder: int | None) -> None:
    """Close what :func:`open_folder` opened (None: nothing)."""
    if folder is not None:
        os.close(folder)
