"""Prefect caching for resume: a task's result is reused while its output is still on disk.

The stores are the source of truth: a chunk's inputs are there when its bands are marked
done, its results when their group is marked complete, its output when its status is
written. Prefect's cache (`INPUTS + TASK_SOURCE`, results kept in the work directory) lets
any rerun, from the CLI, the UI or a schedule, show finished work as Cached; the extra key
below makes a cached result count only while the output it stands for still exists, so
deleting a store never leaves a cache entry that skips the work it needs.
"""

import uuid
from collections.abc import Callable
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext


def while_present(
    is_present: Callable[[dict[str, Any]], bool], *, inputs: bool = True
) -> CachePolicy:
    """INPUTS + TASK_SOURCE (or, with `inputs=False`, just the presence key, for a task
    whose caller composes its own key), valid only while `is_present(parameters)` holds."""

    def presence(_: TaskRunContext, parameters: dict[str, Any]) -> str:
        if parameters.get("refresh") or not is_present(parameters):
            return uuid.uuid4().hex  # a key never seen: the task runs
        return "present"

    policy = CacheKeyFnPolicy(cache_key_fn=presence)
    return INPUTS + TASK_SOURCE + policy if inputs else policy
