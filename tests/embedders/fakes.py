"""Embedders that wrap a real one to record what they are given and to fail on demand."""

from dataclasses import dataclass, field

import torch

from embedders.spec import Embedder, ModelSpec, WeightsInfo


@dataclass
class Wrapper:
    """An embedder around another one that records what it is given and can fail."""

    inner: Embedder
    oom_above: int | None = None  # raise OutOfMemoryError for batches larger than this
    fail_above_value: float | None = None  # raise ValueError for tiles holding a larger value
    batches: list[int] = field(default_factory=list)  # sizes of the batches that ran
    tiles: list[float] = field(default_factory=list)  # a fingerprint of every tile that ran
    spec: ModelSpec = field(init=False)
    weights: WeightsInfo = field(init=False)

    def __post_init__(self) -> None:
        self.spec, self.weights = self.inner.spec, self.inner.weights

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.oom_above is not None and tiles.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError(f"fake OOM for a batch of {tiles.shape[0]}")
        if self.fail_above_value is not None and tiles.max() > self.fail_above_value:
            raise ValueError("marker tile")
        self.batches.append(tiles.shape[0])
        self.tiles += tiles.double().sum(dim=(1, 2, 3)).tolist()
        return self.inner.forward(tiles)
