"""The store's one writer, so two exports never write one store at once: an advisory file
lock on this machine and, for object-store URLs, a Prefect global concurrency limit of one
named for the store, which holds across machines that share a Prefect server."""

import contextlib
import fcntl
import hashlib
import os
import posixpath
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from embedders.naming import setting
from tasks.store.layout import is_url


class StoreBusy(RuntimeError):
    """Another export holds the store's writer lock."""


@contextmanager
def writer_lock(
    path: str, *, wait: bool, lock_dir: str, across_machines: bool = False
) -> Iterator[None]:
    """Hold the store's one writer lock, keyed on its real location (`store_key`): an advisory
    lock on `<path>.lock` beside a local store (symbolic links and `..` resolved), or on a file
    named by the normalised URL's hash in `lock_dir` for an object-store URL (object
    stores have no locks: exports of one URL must then share a machine and work directory).

    The operating system drops the lock when its process dies, so a killed export never
    leaves a stale lock behind (and an export that ends removes its lock file). `wait=False`
    refuses at once when another export holds it. An export takes the lock before it checks
    the store and keeps it until its flow ends, so no second export can start in between.
    `across_machines=True` also takes the store's Prefect
    global concurrency limit (`store_limit`).
    """
    lock_path = _lock_path(path, lock_dir)
    f = _locked(lock_path, path, wait=wait)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        with store_limit(path, wait=wait) if across_machines else contextlib.nullcontext():
            yield
    finally:  # removed while still held: a waiter on it sees it gone and locks a new one
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _locked(lock_path: str, path: str, *, wait: bool) -> IO[str]:
    """The lock file, open and locked. A holder removes it as it lets go (no lock file stays
    behind an export), so a lock taken on a file that is no longer at `lock_path` is let go
    and taken again on the one that is."""
    while True:
        f = open(lock_path, "a+")  # noqa: SIM115 - held open past this function
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreBusy(
                f"another export is writing {path} ({holder}); wait for it to finish, or give "
                f"{setting('wait')} to queue behind it"
            ) from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


# A holder renews its slot while it lives; a killed holder's slot frees after this long.
LEASE_S = 60.0  # the least the server takes


@contextmanager
def store_limit(path: str, *, wait: bool) -> Iterator[None]:
    """Hold the store's Prefect global concurrency limit of one, created if missing (an
    unknown limit would silently limit nothing). Every export that names the same store and
    talks to the same Prefect server, on any machine, is refused (or waits) while it is held."""
    from prefect.concurrency.sync import concurrency

    name = f"swath-store-{_digest(store_key(path))}"
    ensure_concurrency_limit(name, 1)
    held = contextlib.ExitStack()
    try:
        held.enter_context(
            concurrency(
                name, timeout_seconds=None if wait else 2, lease_duration=LEASE_S, strict=True
            )
        )
    except TimeoutError:
        raise StoreBusy(
            f"another export is writing {path} (Prefect concurrency limit {name} is held); "
            f"wait for it to finish, or give {setting('wait')} to queue behind it"
        ) from None
    with held:
        yield


def ensure_concurrency_limit(name: str, slots: int) -> None:
    """Create the Prefect global concurrency limit `name` with `slots`, or set it to that
    (Prefect's `concurrency()` silently limits nothing under a name that does not exist)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another process made it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
            return
        if limit.limit != slots or not limit.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
            )


def store_key(path: str) -> str:
    """What names a store's one writer: its real location. A local path with its symbolic
    links and `..` resolved (a link to a store is that store), or the normalised URL."""
    return normalise_url(path) if is_url(path) else os.path.realpath(path)


def normalise_url(url: str) -> str:
    """One spelling per store URL: the scheme and host in lower case, the path without `.`,
    `..`, doubled or trailing slashes; a `file://` URL's path resolved as a local path."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return f"file://{os.path.realpath(parts.netloc + parts.path)}"
    path = posixpath.normpath(parts.path) if parts.path else ""
    path = "" if path in (".", "/") else path
    return urlunsplit((scheme, parts.netloc.lower(), path, parts.query, ""))


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _lock_path(path: str, lock_dir: str) -> str:
    """The lock file: beside a local store (a `file://` URL is one: a path and its URL are
    one store), or in `lock_dir`, named by the URL's digest, for an object-store URL."""
    key = store_key(path)
    if key.startswith("file://"):
        key = key.removeprefix("file://")
    if is_url(key):
        os.makedirs(lock_dir, exist_ok=True)
        return os.path.join(lock_dir, f"store-{_digest(key)}.lock")
    return f"{key.rstrip('/')}.lock"
