"""DOFA: two builds in all (one random, one from a fake checkpoint), ~4 s each."""

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torchgeo.models import DOFABase16_Weights
from torchgeo.models.resnet import _mean_s2, _std_s2

from embedders import bands, dofa, registry
from embedders.engine import embed_images
from embedders.spec import InferenceOptions, Status
from embedders.weights import checkpoint_path
from tasks.sources import sensors

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> dofa.DofaEmbedder:
    embedder = registry.build("dofa_base", "random", CPU)
    assert isinstance(embedder, dofa.DofaEmbedder)
    return embedder


def test_dofa__pooled_matches_forward_features(model: dofa.DofaEmbedder) -> None:
    tiles = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (2, 6, 224, 224))).float()
    with torch.inference_mode():
        pooled, grid = model.forward(tiles)
        expected = model.module.forward_features(tiles, list(model.wavelengths_um))
        tokens_normed = grid.flatten(2).transpose(1, 2)
    assert pooled.shape == (2, 768) and grid.shape == (2, 768, 14, 14)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    # Each grid cell is a patch token after fc_norm: zero mean across channels.
    torch.testing.assert_close(tokens_normed.mean(-1), torch.zeros(2, 196), rtol=0, atol=1e-4)


def test_dofa__takes_the_wavelengths_of_its_bands(model: dofa.DofaEmbedder) -> None:
    assert model.wavelengths_um == (0.490, 0.560, 0.665, 0.783, 1.610, 2.190)
    assert model.spec.bands == ("B02", "B03", "B04", "B07", "B11", "B12")


def test_dofa__normalisation_is_torchgeos_ssl4eo_s2_statistics() -> None:
    assert list(bands.S2_MEAN_STD) == list(sensors.ALL_BANDS)
    assert [m for m, _ in bands.S2_MEAN_STD.values()] == _mean_s2
    assert [s for _, s in bands.S2_MEAN_STD.values()] == _std_s2
    spec = dofa.SPEC
    assert spec.norm_mean == (1397.6, 1322.3, 1373.1, 2390.7, 2195.2, 1537.4)
    assert spec.norm_std == (854.3, 878.7, 1144.9, 1276.0, 1340.0, 1142.9)


def test_dofa__embeds_a_small_patch_padded_to_one_tile(model: dofa.DofaEmbedder) -> None:
    image = np.random.default_rng(3).uniform(200, 3000, (6, 40, 40)).astype(np.float32)
    options = InferenceOptions(input_prep="tile", output="grid")
    result = embed_images(model, [image], options, CPU)
    assert result.status.tolist() == [Status.OK]
    assert result.grid is not None and result.grid.shape == (1, 768, 3, 3)
    assert np.isfinite(result.grid).all() and np.isfinite(result.pooled).all()


def test_dofa__pretrained_reads_the_checkpoint_in_the_hub_cache(
    model: dofa.DofaEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("offline in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    state["cls_token"] = torch.full_like(state["cls_token"], 0.125)
    path = checkpoint_path(DOFABase16_Weights.DOFA_MAE)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    loaded = registry.build("dofa_base", "pretrained", CPU)
    assert isinstance(loaded, dofa.DofaEmbedder)
    assert torch.equal(loaded.module.cls_token, state["cls_token"])
    assert loaded.weights.identity == "DOFABase16_Weights.DOFA_MAE"
    assert loaded.weights.kind == "pretrained" and loaded.weights.file == str(path)


def test_dofa_s1__takes_vv_and_vh_at_dofas_radar_wavelengths_in_db() -> None:
    """DOFA's v1 weights take Sentinel-1 at 3.75 um (torchgeo's DOFA docstring), and the
    spec normalises with torchgeo's SSL4EO-S12 Sentinel-1 statistics, in dB."""
    from torchgeo.models.resnet import _mean_s1, _std_s1

    spec = dofa.S1_SPEC
    assert spec.sensor == sensors.SENTINEL_1.name and spec.bands == ("VV", "VH")
    assert bands.dofa_wavelengths_um(spec.bands) == (3.75, 3.75)
    assert list(spec.norm_mean) == _mean_s1 and list(spec.norm_std) == _std_s1
    assert spec.identity() != dofa.SPEC.identity()
    assert registry.get_spec("dofa_base_s1") == spec
    assert spec.checkpoint == dofa.SPEC.checkpoint  # one set of DOFA weights for every sensor
