"""Resolving a model's weights: pretrained from the torch hub cache, or seeded random.

Two kinds of model, one place for each step (`load` and `load_local` end in `ready`):
- a torchgeo model: pretrained weights are loaded through the library's own builder with
  its weights enum member, which reads `<torch hub dir>/checkpoints/<file name of the
  weights URL>` when it is there and downloads it otherwise;
- a model with no weights enum: the architecture is built bare, and its state dict read from
  `<torch hub dir>/checkpoints/<spec.checkpoint>`, every key checked (`load_local`).
Nothing falls back silently: "auto" records why it used random weights in
`WeightsInfo.note`.
"""

import contextlib
import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models._api import WeightsEnum

from embedders.naming import given
from embedders.spec import ModelSpec, WeightsChoice, WeightsInfo

# The builder of a model's architecture: the library's function taking `weights=`.
Builder = Callable[[WeightsEnum | None], nn.Module]

# What loading a checkpoint raises when it is missing, cannot be downloaded (URLError
# is an OSError), fails its hash check, is corrupt, or does not fit the architecture.
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, AssertionError, pickle.UnpicklingError)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded; the message says where to put them."""

    def __init__(self, message: str, *, file_present: bool) -> None:
        super().__init__(message)
        self.file_present = file_present


def identity(member: WeightsEnum) -> str:
    """The weights enum member as written in specs and stores: "DOFABase16_Weights.DOFA_MAE"."""
    return f"{type(member).__name__}.{member.name}"


def member(name: str) -> WeightsEnum:
    """The torchgeo weights enum member a spec names ("DOFABase16_Weights.DOFA_MAE")."""
    import torchgeo.models

    kind, _, entry = name.partition(".")
    enum = getattr(torchgeo.models, kind, None)
    if enum is None or not hasattr(enum, entry):
        raise ValueError(f"{name!r} is not a torchgeo.models weights enum member")
    found = getattr(enum, entry)
    if not isinstance(found, WeightsEnum):
        raise ValueError(f"{name!r} is not a torchgeo.models weights enum member")
    return found


def torchgeo_builder(function: str, kind: str, **kwargs: object) -> Builder:
    """The architecture builder `torchgeo.models.<function>(weights=member, **kwargs)`,
    refusing a weights member that is not of the enum `kind` ("DOFALarge16_Weights")."""

    def build(member: WeightsEnum | None) -> nn.Module:
        import torchgeo.models

        if member is not None and type(member).__name__ != kind:
            raise TypeError(f"{function} takes {kind}, got {member!r}")
        module: nn.Module = getattr(torchgeo.models, function)(weights=member, **kwargs)
        return module

    return build


def checkpoint_path(member: WeightsEnum) -> Path:
    """Where torch hub keeps (and the builder looks for) the checkpoint of `member`."""
    name = os.path.basename(urlparse(member.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def build_random(spec: ModelSpec, build: Builder) -> tuple[nn.Module, WeightsInfo]:
    """The architecture with weights drawn from `spec.seed`: the same on every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        module = build(None)
    return module, WeightsInfo(kind="random", identity=f"seed={spec.seed}")


def build_pretrained(
    spec: ModelSpec, member: WeightsEnum, build: Builder
) -> tuple[nn.Module, WeightsInfo]:
    """The architecture with `member`'s weights, or WeightsUnavailable saying what to do."""
    path = checkpoint_path(member)
    present = path.exists()
    said = io.StringIO()  # torch hub says "Downloading: ..." before it tries, even offline
    try:
        with contextlib.redirect_stdout(said):
            module = build(member)
    except _LOAD_ERRORS as e:
        if present:
            problem = f"the checkpoint at {path} could not be loaded ({type(e).__name__}: {e}); "
            fix = "delete it so it is downloaded again, or replace it with the right file"
        else:
            problem = f"the checkpoint is not at {path} and downloading it failed ({e}); "
            fix = f"download {member.url} and place it at {path}"
        raise WeightsUnavailable(
            f"model {spec.name}: pretrained weights {identity(member)} unavailable: {problem}"
            f"{fix}, or give {given(weights='random')} to build the architecture with seeded "
            f"random weights (seed={spec.seed})",
            file_present=present,
        ) from e
    if said.getvalue():  # it did download: say so once
        print(said.getvalue().strip(), flush=True)
    return module, WeightsInfo(kind="pretrained", identity=identity(member), file=str(path))


def resolve(
    spec: ModelSpec, member: WeightsEnum, build: Builder, choice: WeightsChoice
) -> tuple[nn.Module, WeightsInfo]:
    """Build the module with the weights `choice` asks for.

    "auto" means pretrained when the checkpoint is in the hub cache or downloads, random
    otherwise, with the reason in the note. A checkpoint that is present but does not
    load is an error in every mode.
    """
    if choice == "random":
        return build_random(spec, build)
    if choice == "pretrained":
        return build_pretrained(spec, member, build)
    try:
        return build_pretrained(spec, member, build)
    except WeightsUnavailable as e:
        if e.file_present:
            raise
        reason = e.__cause__ or e
        module, info = build_random(spec, build)
        note = (
            f"pretrained checkpoint not in {checkpoint_path(member)} and download failed: {reason}"
        )
        return module, WeightsInfo(kind=info.kind, identity=info.identity, note=note)


def ready(module: nn.Module, device: torch.device) -> nn.Module:
    """A built module as every embedder runs it: eval mode, frozen, on `device`."""
    module.eval().requires_grad_(False)
    return module.to(device)


def _check_choice(choice: WeightsChoice) -> None:
    if choice not in ("auto", "pretrained", "random"):
        raise ValueError(f"weights must be auto, pretrained or random; got {choice!r}")


def load(
    spec: ModelSpec,
    member: WeightsEnum,
    build: Builder,
    choice: WeightsChoice,
    device: torch.device,
) -> tuple[nn.Module, WeightsInfo]:
    """Resolve the weights, then put the module in eval mode on `device`, frozen."""
    _check_choice(choice)
    module, info = resolve(spec, member, build, choice)
    return ready(module, device), info


def local_checkpoint(spec: ModelSpec) -> Path:
    """Where the checkpoint of a model with no weights enum is looked for: the hub cache."""
    if not spec.checkpoint:
        raise ValueError(f"model {spec.name}: its spec names no checkpoint (set weights_url)")
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.checkpoint


def load_local(
    spec: ModelSpec, build: Callable[[], nn.Module], choice: WeightsChoice, device: torch.device
) -> tuple[nn.Module, WeightsInfo]:
    """A model with no weights enum: the architecture from `build()`, with the state dict
    at `local_checkpoint(spec)` (read safely, every key of the architecture required and no
    other), or seeded random weights; then `ready`. "auto" is pretrained when the file is
    there, random otherwise, with the reason in the note."""
    _check_choice(choice)
    path = local_checkpoint(spec)
    if choice == "random" or (choice == "auto" and not path.exists()):
        module, info = build_random(spec, lambda _member: build())
        if choice == "auto":
            note = f"pretrained checkpoint not in {path}"
            info = WeightsInfo(kind=info.kind, identity=info.identity, note=note)
        return ready(module, device), info
    module = build()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    except _LOAD_ERRORS as e:
        present = path.exists()
        why = " ".join(str(e).split())  # torch's message spans lines
        if present:
            problem = f"does not load ({why}): replace it with the file at {spec.weights_url}"
        else:
            problem = f"is not there: download {spec.weights_url} and place it there"
        raise WeightsUnavailable(
            f"model {spec.name}: the checkpoint {path} {problem}, or give "
            f"{given(weights='random')} to build the architecture with seeded random weights "
            f"(seed={spec.seed})",
            file_present=present,
        ) from e
    info = WeightsInfo(kind="pretrained", identity=spec.pretrained_weights, file=str(path))
    return ready(module, device), info
