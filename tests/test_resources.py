"""Memory limit, sizes, thread counts and devices (kktembed/resources.py)."""

import pytest
import torch

from kktembed import resources
from kktembed.errors import UsageError
from kktembed.resources import (
    ensure_fits,
    format_size,
    intra_op_threads,
    memory_limit_bytes,
    parse_size,
    resolve_device,
    threads_for_work,
)


@pytest.mark.parametrize(
    "text, expected",
    [("8GiB", 8 * 2**30), ("500MB", 500 * 10**6), ("1.5G", 3 * 2**29), ("123", 123), (" 2 kib ", 2048), ("64k", 65536), ("7b", 7)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "8 GiBs", "-1GB", "1e9", "8 parsecs"])
def test_parse_size_rejects_what_is_not_a_size(text):
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("n_bytes, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (2_092_538_888, "1.95 GiB"), (5 * 2**40, "5 TiB")])
def test_format_size(n_bytes, text):
    assert format_size(n_bytes) == text


def test_format_then_parse_round_trips_to_three_figures():
    for n_bytes in (1, 999, 123_456, 987_654_321, 3 * 2**40 + 17):
        assert parse_size(format_size(n_bytes).replace(" ", "")) == pytest.approx(n_bytes, rel=5e-3)


def test_memory_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", "3GiB")
    assert memory_limit_bytes() == 3 * 2**30
    monkeypatch.setenv("KKTEMBED_MEMORY_LIMIT", "lots")
    with pytest.raises(UsageError, match="KKTEMBED_MEMORY_LIMIT"):
        memory_limit_bytes()


def test_memory_limit_is_a_fraction_of_what_is_available(monkeypatch, tmp_path):
    monkeypatch.delenv("KKTEMBED_MEMORY_LIMIT", raising=False)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   10000000 kB\n")
    assert resources.available_memory_bytes(str(meminfo)) == 10_000_000 * 1024
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 10_000_000 * 1024)
    assert memory_limit_bytes() == int(resources.AVAILABLE_FRACTION * 10_000_000 * 1024)
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: None)
    assert memory_limit_bytes() == resources.FALLBACK_LIMIT


def test_available_memory_without_meminfo_falls_back_to_sysconf(tmp_path):
    assert resources.available_memory_bytes(str(tmp_path / "missing")) > 0


def test_ensure_fits_names_the_estimate_the_limit_and_the_variable():
    ensure_fits(2**20, "a thing", "shrink it", limit=2**20)
    with pytest.raises(UsageError) as refused:
        ensure_fits(3 * 2**30, "the Gram matrix", "lower --active-tol", limit=2**30)
    assert "3 GiB" in refused.value.message and "1 GiB" in refused.value.message
    assert "lower --active-tol" in refused.value.hint and "KKTEMBED_MEMORY_LIMIT" in refused.value.hint


def test_small_work_runs_on_one_thread_and_large_work_on_idle_cores(monkeypatch):
    monkeypatch.setattr(resources, "usable_cores", lambda: 8)
    assert threads_for_work(1e6, current=8) == 1
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # only this process
    assert threads_for_work(1e12, current=8) == 8
    assert threads_for_work(1e12, current=4) == 4
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (6.5, 1.0, 1.0))  # 5.5 cores busy elsewhere
    assert threads_for_work(1e12, current=8) == 3
    monkeypatch.setattr(resources.os, "getloadavg", lambda: (40.0, 1.0, 1.0))
    assert threads_for_work(1e12, current=8) == 1


def test_intra_op_threads_restores_the_previous_setting():
    previous = torch.get_num_threads()
    with intra_op_threads(1.0) as count:
        assert count == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == previous


def test_devices():
    assert resolve_device(None) == torch.device("cpu") == resolve_device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu-ish", "mps"):
        with pytest.raises(UsageError):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_usage_error():
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")
