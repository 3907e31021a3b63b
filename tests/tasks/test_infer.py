import threading
import time

import pytest

from tasks.infer import DevicePool, devices_of


def test_device_pool__runs_one_task_per_device_and_no_more():
    pool = DevicePool(["gpu-a", "gpu-b"])
    held: list[str] = []
    peak = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal peak
        with pool.take() as device:
            with guard:
                assert device not in held, f"{device} taken twice at once"
                held.append(device)
                peak = max(peak, len(held))
            time.sleep(0.2)
            with guard:
                held.remove(device)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak == 2
    assert not held


def test_device_pool__needs_a_device():
    with pytest.raises(ValueError, match="at least one device"):
        DevicePool([])


def test_devices_of__cpu_is_one_device():
    assert devices_of("cpu") == ["cpu"]


def _request(precision: str):
    from datetime import date

    from embedders.spec import InferenceOptions
    from tasks.products.registry import ProductRequest

    options = InferenceOptions(precision=precision)  # type: ignore[arg-type]
    return ProductRequest(
        start=date(2024, 1, 1),
        end=date(2024, 12, 31),
        patch_px=32,
        source="stac-catalog",
        catalog="catalog.json",
        collection="s2",
        max_cloud_cover=100.0,
        source_options={},
        options=options,
        weights="random",
        device="cpu",
    )


def test_resolve_model__bf16_is_checked_once_up_front_and_recorded():
    from tasks.infer import resolve_model

    product = resolve_model("ssl4eo_resnet18_rgb", _request("bf16"))
    check = product.precision_check
    assert check is not None and check["precision"] == "bf16" and check["device"] == "cpu"
    assert check["cosine"] >= 0.999
    assert product.output().provenance["precision_check"] == check
    assert "bf16 checked on cpu: cosine to fp32" in product.describe()


def test_resolve_model__fp16_on_the_cpu_is_refused_before_anything_is_written():
    import pytest

    from tasks.infer import resolve_model
    from tasks.products.registry import ProductError

    with pytest.raises(ProductError, match="fp16 needs a CUDA device"):
        resolve_model("ssl4eo_resnet18_rgb", _request("fp16"))


def test_cpu_threads__one_torch_thread_on_several_cores_is_said(caplog):
    import os

    import pytest
    import torch

    from tasks.infer import _check_cpu_threads

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    _check_cpu_threads.cache_clear()
    try:
        _check_cpu_threads()
    finally:
        torch.set_num_threads(before)
    assert "torch runs on 1 thread" in caplog.text
