"""Checks of what the command line and the flow are given, before anything is written: paths
(an output store's real location, its name, its protocol, whether it can be written), the
Prefect home, and the runner's settings. Each raises UsageError with one line that names
the problem and the fix.
"""

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from urllib.parse import urlsplit

from flows.naming import setting


class UsageError(ValueError):
    """Input the user must fix; the CLI prints the message and exits 2."""


# What this run made before it started writing (a journal per run, see `undone_if_refused`).
_MADE: ContextVar[list[str] | None] = ContextVar("swath_made", default=None)


@contextlib.contextmanager
def undone_if_refused() -> Iterator[None]:
    """Planning and the checks make a few things (the work folder, the plan file, the demo
    catalog); when the run is refused or stopped before it writes, they are removed again,
    so that exit 2 leaves the out and work folders as they were. What they make is noted
    with `made` / `make_folder`."""
    journal: list[str] = []
    token = _MADE.set(journal)
    try:
        yield
    except BaseException:
        for path in reversed(journal):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        raise
    finally:
        _MADE.reset(token)


def made(path: str) -> None:
    """Note that this run made `path` (removed again if the run is refused)."""
    journal = _MADE.get()
    if journal is not None:
        journal.append(path)


def make_folder(path: str) -> None:
    """`os.makedirs(path)`, noting the outermost folder it made."""
    outermost, probe = None, os.path.abspath(path)
    while not os.path.lexists(probe):
        outermost, probe = probe, os.path.dirname(probe)
    os.makedirs(path, exist_ok=True)
    if outermost:
        made(outermost)


def file_in_the_way(path: str) -> str | None:
    """`path` itself or the nearest of its folders that exists but is no folder (a file where
    a folder belongs), or None."""
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    return None if os.path.isdir(probe) else probe


# Beside a local store swath makes `<store>.creating-<8 hex>` (a store being laid out), and
# `<store>.lock`, `<store>.stac` and `<store>.quicklook`: the longest adds 18 bytes to its name.
STORE_SUFFIX_BYTES = len(".creating-") + 8


def store_location(store: str) -> str:
    """Where a store really is: a local path with its symbolic links and `..` resolved (a
    link to a store and the store itself are one store), or a normalised URL.

    Raises UsageError for a path that cannot name a store here: a link loop, a name too
    long for its filesystem, or a URL whose protocol no installed filesystem serves."""
    from tasks.store.layout import is_url

    if is_url(store):
        from tasks.store.locks import normalise_url

        check_protocol(store, setting("store"))
        return normalise_url(store)
    out = setting("store")  # how the reader names the setting: --out, or the form's field
    path = os.path.join(os.getcwd(), store)  # not abspath: `link/..` is not taken lexically
    try:
        os.stat(path)
    except FileNotFoundError:
        pass  # a new store (or a link to where one will be): realpath resolves what exists
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(
                f"{out} {store} is a loop of symbolic links ({e.strerror}); remove the link or "
                f"choose another {out}"
            ) from e
        blocker = file_in_the_way(path) if e.errno == errno.ENOTDIR else None
        if blocker:
            raise UsageError(
                f"{out} {store}: {blocker} is a file, not a folder; choose another {out}"
            ) from e
        if e.errno != errno.ENAMETOOLONG:
            raise UsageError(f"{out} {store} cannot be used ({e.strerror}); choose another") from e
    real = os.path.realpath(path)
    check_name_length(real, out, suffix_bytes=STORE_SUFFIX_BYTES)
    return real


def check_protocol(url: str, flag: str) -> None:
    """A URL's protocol has an installed fsspec filesystem (s3:// needs s3fs, gs:// gcsfs)."""
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError as e:
        raise UsageError(
            f"{flag} {url}: no filesystem serves the protocol '{protocol}://'; give a local "
            "path, or a URL such as s3://bucket/e.zarr or gs://bucket/e.zarr"
        ) from e
    except ImportError as e:
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(protocol)
        needs = f"the {package} package" if package else "a package swath does not install"
        raise UsageError(
            f"{flag} {url}: writing to {protocol}:// needs {needs} ({e}); install it "
            f"({'pip install ' + package if package else 'see the message'}) or give a local path"
        ) from e


def check_name_length(path: str, flag: str, *, suffix_bytes: int = 0) -> None:
    """Every component of `path`, with `suffix_bytes` more for the last, fits the filesystem's
    limit on a name, and the whole path its limit on a path."""
    probe = path
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    name_max = _pathconf(probe, "PC_NAME_MAX", 255)
    path_max = _pathconf(probe, "PC_PATH_MAX", 4096)
    parts = path.split(os.sep)
    for i, part in enumerate(parts):
        size = len(part.encode()) + (suffix_bytes if i == len(parts) - 1 else 0)
        if size > name_max:
            last = i == len(parts) - 1 and suffix_bytes
            extra = f" (with the {suffix_bytes} bytes swath adds beside it)" if last else ""
            raise UsageError(
                f"{flag}: the name {part[:40]}... is {len(part.encode())} bytes long{extra}; "
                f"this filesystem allows {name_max}: choose a shorter name"
            )
    if len(path.encode()) + suffix_bytes >= path_max:
        raise UsageError(
            f"{flag}: the path is {len(path.encode())} bytes long; this system allows "
            f"{path_max}: choose a shorter one"
        )


def _pathconf(path: str, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def check_writable(folder: str, what: str, *, must_exist: bool) -> None:
    """Refuse a folder that cannot be written, before anything is: a probe file is made in
    it (or, for a folder still to be created, in its nearest existing parent) and removed."""
    probe = folder
    blocker = file_in_the_way(folder)
    if blocker:
        under = "" if blocker == os.path.abspath(folder) else f" is under {blocker}, which"
        raise UsageError(f"{what}{under} is a file, not a folder; choose another")
    if must_exist and not os.path.isdir(folder):
        raise UsageError(f"{what}: the folder {folder} does not exist; create it or choose another")
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UsageError(
            f"{what} cannot be written ({e.strerror or e} in {probe}); choose another"
        ) from e


def check_store_writable(store: str) -> None:
    """An existing local store can be written where a rerun writes: every folder and file in
    it (a read-only store is refused with what to do, not left to fail task by task)."""
    for root, dirs, files in os.walk(store):
        for name in [".", *dirs, *files]:
            path = os.path.normpath(os.path.join(root, name))
            if not os.access(path, os.W_OK):
                raise UsageError(
                    f"output store {store} cannot be written ({path} is read-only); make the "
                    "store writable (its permissions, attributes or mount), then run the same "
                    f"command, or export into another {setting('store')}"
                )


def check_prefect_home(home: str) -> None:
    """Prefect keeps its settings and the temporary server's database in its home folder."""
    try:
        check_writable(home, f"PREFECT_HOME {home}", must_exist=False)
    except UsageError as e:
        reason = str(e).removesuffix("; choose another")
        raise UsageError(
            f"{reason}: Prefect keeps its database there; set PREFECT_HOME to a writable "
            "folder (or PREFECT_API_URL to a running Prefect server)"
        ) from e


def check_runner(
    runner: str, *, dask_address: str | None, dask_workers: int | None, timeout_s: float = 5.0
) -> None:
    """The runner's settings can work: a local cluster of at least one worker, an address
    only for Dask and only without a worker count, and a scheduler that answers there."""
    if runner != "dask":
        given = (
            "--dask-address" if dask_address
            else "--dask-workers" if dask_workers is not None
            else ""
        )  # fmt: skip
        if given:
            raise UsageError(f"{given} is for --runner dask; add --runner dask or leave it out")
        return
    if dask_address and dask_workers is not None:
        raise UsageError(
            f"--dask-workers is for the local cluster; the cluster at {dask_address} has its "
            "own workers: leave --dask-workers out"
        )
    if dask_workers is not None and dask_workers < 1:
        raise UsageError(
            f"--dask-workers {dask_workers}: a local cluster needs at least 1 worker; give "
            "--dask-workers 1 or more"
        )
    if dask_workers is not None and dask_workers > 4 * (os.cpu_count() or 1):
        raise UsageError(
            f"--dask-workers {dask_workers} is more than 4 per core of this machine "
            f"({os.cpu_count()} cores); give at most {4 * (os.cpu_count() or 1)}"
        )
    if dask_address:
        _check_scheduler(dask_address, timeout_s)


def _check_scheduler(address: str, timeout_s: float) -> None:
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.scheme not in ("tcp", "tls") or not host or not port:
        raise UsageError(
            f"--dask-address {address} is not a scheduler address; give tcp://host:port "
            "(a Dask scheduler's, e.g. tcp://scheduler:8786)"
        )
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise UsageError(
            f"--dask-address {address}: no Dask scheduler answers there ({e.strerror or e}); "
            "start it, or check the address"
        ) from e
