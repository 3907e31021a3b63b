"""The store's one writer: an advisory lock, so two exports never write one store at once."""

import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.store import is_url


class StoreBusy(RuntimeError):
    """Another export holds the store's writer lock."""


_held_locks: set[str] = set()  # lock files this process holds


@contextmanager
def writer_lock(path: str, *, wait: bool, lock_dir: str, reuse: bool = False) -> Iterator[None]:
    """Hold the store's one writer lock: an advisory lock on `<path>.lock` beside a local
    store, or on a file named by the URL's hash in `lock_dir` for an object-store URL (object
    stores have no locks: exports of one URL must then share a machine and work directory).

    The operating system drops the lock when its process dies, so a killed export never
    leaves a stale lock behind. `wait=False` refuses at once when another export holds it.
    `reuse=True` (the flow) goes on under a lock this process already holds: the command
    line takes the lock before its checks and keeps it until the flow ends, so no second
    export can start in between.
    """
    lock_path = _lock_path(path, lock_dir)
    if reuse and lock_path in _held_locks:
        yield
        return
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StoreBusy(
                f"another export is writing {path} ({holder}); wait for it to finish, or pass "
                "--wait to queue behind it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        _held_locks.add(lock_path)
        try:
            yield
        finally:
            _held_locks.discard(lock_path)
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_path(path: str, lock_dir: str) -> str:
    if is_url(path):
        os.makedirs(lock_dir, exist_ok=True)
        digest = hashlib.sha256(path.encode()).hexdigest()[:16]
        return os.path.join(lock_dir, f"store-{digest}.lock")
    return f"{path.rstrip('/')}.lock"
