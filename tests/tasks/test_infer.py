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
