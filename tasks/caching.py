"""Prefect caching for resume: a task's result is reused while its output is still on disk.

The stores are the source of truth: a chunk's inputs are there when its bands are marked
done, its results when their group is marked complete, its output when its status is
written. Prefect's cache (`INPUTS + TASK_SOURCE`, results kept in the work directory) lets
any rerun, from the CLI, the UI or a schedule, show finished work as Cached.

A task's cache key never depends on whether its output exists: the run that makes the
output records its result under the key every later run computes, so the first rerun
already finds it. Instead, while the output is missing (or `refresh` is asked for), the
record under the key is removed before Prefect looks it up: the task runs, and records its
result anew. Deleting a store never leaves a cache entry that skips the work it needs.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore, get_default_result_storage


class Presence(Protocol):
    """Whether a task's output, for these parameters, is on disk."""

    def __call__(self, parameters: dict[str, Any], /) -> bool: ...


@dataclass
class WhilePresent(CachePolicy):
    """`policy`'s key, whose record is used only while `is_present(parameters)` holds."""

    policy: CachePolicy = field(kw_only=True)
    is_present: Presence = field(kw_only=True)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = self.policy.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if key is not None and (inputs.get("refresh") or not self.is_present(inputs)):
            forget(task_ctx.result_store, key)
        return key


def while_present(is_present: Presence, *, policy: CachePolicy | None = None) -> CachePolicy:
    """`policy` (INPUTS + TASK_SOURCE by default), valid only while `is_present(parameters)`."""
    return WhilePresent(policy=policy or INPUTS + TASK_SOURCE, is_present=is_present)


def forget(store: ResultStore, key: str) -> None:
    """Remove the record under `key` from a task's result store, so that the task runs.

    Tasks keep their results in a folder (the work directory's, or Prefect's default); a
    store elsewhere cannot be cleared here, and is refused rather than trusted."""
    # Where Prefect's own exists() looks when the task names no storage; `_sync` as it calls it.
    storage = store.result_storage or get_default_result_storage(_sync=True)  # type: ignore[call-arg]
    if store.metadata_storage is not None or not isinstance(storage, LocalFileSystem):
        raise TypeError(
            f"cannot remove the cached result {key} from {storage!r}: swath keeps task "
            "results in a local folder; leave result_storage at the work directory's"
        )
    Path(storage.basepath or ".").expanduser().joinpath(key).unlink(missing_ok=True)
