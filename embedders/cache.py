"""Whether a model's pretrained checkpoint is in the local torch hub cache, told without
importing torch (`--list-models` stays fast).

The directory is the one `torch.hub.get_dir()` returns when `torch.hub.set_dir` was not
called: `$TORCH_HOME/hub`, else `$XDG_CACHE_HOME/torch/hub`, else `~/.cache/torch/hub`
(torch/hub.py, `_get_torch_home`); checkpoints live in its `checkpoints/` folder.
"""

import os
from pathlib import Path


def hub_checkpoints_dir() -> Path:
    home = os.environ.get("TORCH_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(cache, "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def cached_checkpoint(file: str) -> Path | None:
    """The local checkpoint named `file`, or None when it is not there (or `file` is "")."""
    if not file:
        return None
    path = hub_checkpoints_dir() / file
    return path if path.is_file() else None
