"""Per-device figures for /api/status, read from device collectors (e.g. nanogpt_monitor.gpu).

A device collector is any prometheus-client collector whose families carry a
`gpu` label (plus `uuid` and `name`). The exporter does not know what a GPU
is: the training process reads such a collector at each log point, writes its
samples as gauges and regroups the same samples by device for the status JSON,
so the page and Prometheus see one set of values.
"""

from __future__ import annotations

from typing import Iterable

PREFIX = "nanogpt_gpu_"
DEVICE_KEYS = ("gpu", "uuid", "name")
RUN_KEYS = ("run_id", "rank")


def device_status(families: Iterable) -> list[dict]:
    """One dict per device: gpu, uuid, name, then each family by its name less `nanogpt_gpu_`
    (e.g. memory_reserved_bytes); a family with one more label maps that label's values to theirs."""
    devices: dict[str, dict] = {}
    for family in families:
        field = family.name.removeprefix(PREFIX)
        for sample in family.samples:
            labels = sample.labels
            device = devices.setdefault(labels["gpu"], {key: labels.get(key) for key in DEVICE_KEYS})
            extra = [v for k, v in labels.items() if k not in DEVICE_KEYS + RUN_KEYS]
            if extra:
                device.setdefault(field, {})[extra[0]] = sample.value
            else:
                device[field] = sample.value
    return list(devices.values())
