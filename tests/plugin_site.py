"""An installed package, as importlib.metadata finds one: its module and a dist-info with
entry points, in a folder that goes on sys.path (or a subprocess's PYTHONPATH)."""

from pathlib import Path


def install(root: Path, name: str, group: str, points: dict[str, str], module: str) -> None:
    """Install distribution `name` (module `name`.py holding `module`) into `root`, declaring
    `points` (entry point name -> "module:attribute") in `group`."""
    (root / f"{name}.py").write_text(module)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
