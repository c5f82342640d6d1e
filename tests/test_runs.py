"""Whole training runs (kktembed check over many checkpoints): one process, rows sorted by step,
CSV/JSON Lines/Parquet written row by row, failures isolated, resume, local workers and Dask."""

import csv
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import kktembed
from kktembed.runs import RunRow, check_run, checkpoint_step, read_rows

STEPS = (40, 80, 160, 320, 640, 1280, 2560, 5120)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """8 checkpoints along loss-scaled gradient descent (GD on log 𝓛, Lyu & Li) of a 2-8-1 ReLU
    network on the paper's separable Gaussians, with the step in each file's metadata."""
    from kktembed.loading import load_data

    folder = tmp_path_factory.mktemp("run")
    data = load_data(None, "gaussians")
    x, y = data.x, data.y.double()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8, bias=False), nn.ReLU(), nn.Linear(8, 1, bias=False)).double()
    for step in range(1, STEPS[-1] + 1):
        log_loss = torch.logsumexp(-y * model(x)[:, 0], 0)
        model.zero_grad()
        log_loss.backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= 0.01 * parameter.grad
        if step in STEPS:
            save_file({k: v.detach() for k, v in model.state_dict().items()}, folder / f"weights_{STEPS.index(step)}.safetensors", metadata={"step": str(step)})
    save_file({"x": x, "y": data.y}, folder / "train.safetensors")
    return folder


def numbers(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "seconds"}


def test_a_run_in_one_call_shows_the_margin_rising_and_the_residual_falling(run_folder, tmp_path, run_cli):
    out, plot = tmp_path / "run.csv", tmp_path / "run.png"
    code, stdout, err = run_cli("check", run_folder, "--data", run_folder / "train.safetensors", "--out", out, "--plot", plot, "--json")
    assert code == 0, err
    rows = json.loads(stdout)["rows"]
    assert [row["step"] for row in rows] == list(STEPS) and all(row["step_source"] == "metadata" for row in rows)
    separated = [row for row in rows if row["verdict"] != "not_separable"]
    first, last = separated[0], separated[-1]
    assert len(separated) >= 6
    assert last["normalized_margin"] > first["normalized_margin"]
    assert last["relative_stationarity_residual"] < first["relative_stationarity_residual"]
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(STEPS) and float(written[-1]["normalized_margin"]) == pytest.approx(last["normalized_margin"], rel=1e-15)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_row_is_what_a_single_check_says(run_folder):
    result = check_run([run_folder], data=run_folder / "train.safetensors", profile=False)
    row = result.rows[-1]
    single = kktembed.check(row.checkpoint, data=run_folder / "train.safetensors", profile=False)
    assert row.relative_stationarity_residual == single.relative_stationarity_residual
    assert row.normalized_margin == single.normalized_margin and row.verdict == single.verdict


def test_one_checkpoint_prints_todays_report(run_folder, run_cli):
    code, out, err = run_cli("check", run_folder / "weights_7.safetensors", "--data", run_folder / "train.safetensors")
    assert code == 0, err
    assert "kktembed check" in out and "active-set profile" in out and "verdict:" in out


def test_step_from_name_or_position(tmp_path):
    save_file({"0.weight": torch.ones(1, 2)}, tmp_path / "epoch12_step300.safetensors")
    save_file({"0.weight": torch.ones(1, 2)}, tmp_path / "final.safetensors")
    assert checkpoint_step(tmp_path / "epoch12_step300.safetensors", 5) == (300, "name")
    assert checkpoint_step(tmp_path / "final.safetensors", 5) == (5, "position")


def test_a_failing_checkpoint_is_a_row_and_the_others_go_on(run_folder, tmp_path, run_cli):
    folder = tmp_path / "mixed"
    shutil.copytree(run_folder, folder)
    (folder / "weights_3.safetensors").write_bytes(b"\x00" * 40)  # corrupt
    code, stdout, err = run_cli("check", folder, "--data", folder / "train.safetensors", "--json")
    assert code == 1  # documented: 1 when some checkpoint failed
    payload = json.loads(stdout)
    failed = [row for row in payload["rows"] if row["error"]]
    assert payload["n_failed"] == 1 and len(failed) == 1 and "not a safetensors file" in failed[0]["error"]
    assert sum(1 for row in payload["rows"] if row["verdict"]) == len(STEPS) - 1


def test_resume_keeps_finished_rows_and_survives_a_cut_line(run_folder, tmp_path):
    folder, out = tmp_path / "partial", tmp_path / "run.jsonl"
    folder.mkdir()
    for index in range(5):
        shutil.copy(run_folder / f"weights_{index}.safetensors", folder)
    first = check_run([folder], data=run_folder / "train.safetensors", out=out, profile=False)
    assert first.n_resumed == 0 and len(read_rows(out)) == 5
    with out.open("a") as handle:
        handle.write('{"checkpoint": "cut sh')  # an interruption in the middle of a row
    for index in range(5, 8):
        shutil.copy(run_folder / f"weights_{index}.safetensors", folder)
    second = check_run([folder], data=run_folder / "train.safetensors", out=out, resume=True, profile=False)
    assert second.n_resumed == 5 and len(second.rows) == 8 and len(read_rows(out)) == 8
    again = check_run([folder], data=run_folder / "train.safetensors", out=out, resume=True, profile=False, active_tol=0.05)
    assert again.n_resumed == 0  # other options: nothing is reused


def test_out_refuses_to_overwrite_without_resume_or_force(run_folder, tmp_path, run_cli):
    out = tmp_path / "run.csv"
    out.write_text("someone else's file")
    code, _, err = run_cli("check", run_folder / "weights_7.safetensors", run_folder / "weights_6.safetensors", "--data", run_folder / "train.safetensors", "--out", out)
    assert code == 1 and "exists" in err and out.read_text() == "someone else's file"


def test_parquet_rows_round_trip(run_folder, tmp_path):
    out = tmp_path / "run.parquet"
    result = check_run([run_folder], data=run_folder / "train.safetensors", out=out, profile=False)
    assert [row.to_dict() for row in read_rows(out)] == [row.to_dict() for row in sorted(result.rows, key=lambda r: r.step)]


def test_local_workers_give_the_serial_rows(run_folder):
    serial = check_run([run_folder], data=run_folder / "train.safetensors", profile=False)
    parallel = check_run([run_folder], data=run_folder / "train.safetensors", profile=False, workers=2)
    assert [numbers(row.to_dict()) for row in parallel.rows] == [numbers(row.to_dict()) for row in serial.rows]


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None)
    yield cluster
    cluster.close()


def test_dask_cluster_gives_the_serial_rows(run_folder, dask_cluster):
    serial = check_run([run_folder], data=run_folder / "train.safetensors", profile=False)
    distributed = check_run([run_folder], data=run_folder / "train.safetensors", profile=False, scheduler=dask_cluster.scheduler_address)
    assert [numbers(row.to_dict()) for row in distributed.rows] == [numbers(row.to_dict()) for row in serial.rows]


KILL_PLUGIN = """
import os
from kktembed import hookimpl

@hookimpl
def kktembed_detect_adapter(tensor_shapes, hints):
    if "kill_switch.weight" in tensor_shapes:
        os._exit(1)  # the worker process dies in the middle of its task
"""


def test_dask_failures_are_isolated(run_folder, tmp_path, monkeypatch):
    """A task that fails (a corrupt file) and a task whose worker process dies both become rows
    with an error; every other row arrives."""
    distributed = pytest.importorskip("dask.distributed")
    import dask

    from test_plugins import make_distribution

    make_distribution(tmp_path, "killplug", KILL_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start from this sys.path
    monkeypatch.setenv("KKTEMBED_LOAD_PLUGINS", "killplug")  # and load the test plugin
    folder = tmp_path / "cluster"
    shutil.copytree(run_folder, folder)
    (folder / "weights_2.safetensors").write_bytes(b"\x00" * 40)
    save_file({"kill_switch.weight": torch.ones(1, 2)}, folder / "weights_5.safetensors", metadata={"step": "640"})
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            result = check_run([folder], data=folder / "train.safetensors", profile=False, scheduler=cluster.scheduler_address)
    errors = {os.path.basename(row.checkpoint): row.error for row in result.rows if row.failed}
    assert set(errors) == {"weights_2.safetensors", "weights_5.safetensors"}, errors
    assert "not a safetensors file" in errors["weights_2.safetensors"] and "worker failed" in errors["weights_5.safetensors"]
    assert sum(1 for row in result.rows if not row.failed) == len(STEPS) - 2


def test_row_from_record_reads_csv_strings():
    row = RunRow.from_record({"checkpoint": "a", "sha256": "b", "step": "3", "step_source": "name", "options_key": "k", "q_min": "0.5", "error": ""})
    assert row.step == 3 and row.q_min == 0.5 and row.error is None
