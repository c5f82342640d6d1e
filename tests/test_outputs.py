"""Nothing is lost (kktembed.outputs): inputs are never overwritten, whatever their spelling; special
files are never replaced; outputs of one command do not collide; sets of outputs are atomic."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from kktembed.outputs import PARTIAL


def one_line_error(code, out, err, fragment, expected_code=None):
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), err
    assert fragment in lines[0], lines[0]
    if expected_code is not None:
        assert code == expected_code, (code, err)


@pytest.fixture
def narrow(tmp_path, fixtures_dir):
    """The demo checkpoint and its data file side by side (the checkpoint's kktembed.data names it)."""
    shutil.copy(fixtures_dir / "mlp_gd_digits38.safetensors", tmp_path)
    shutil.copy(fixtures_dir / "digits38.safetensors", tmp_path)
    return tmp_path / "mlp_gd_digits38.safetensors"


def test_the_data_file_named_in_metadata_is_protected(narrow, run_cli):
    data = narrow.parent / "digits38.safetensors"
    before = data.read_bytes()
    for args in (["split", narrow, "-o", data, "--neuron", "0", "--force"], ["check", narrow, "--save-multipliers", data, "--force"]):
        one_line_error(*run_cli(*args), fragment="is an input of this command")
        assert data.read_bytes() == before


def test_inputs_are_protected_by_any_spelling_and_by_hard_link(narrow, run_cli):
    before = narrow.read_bytes()
    link = narrow.parent / "hardlink.safetensors"
    os.link(narrow, link)
    for target in (link, narrow.parent / "." / narrow.name):
        one_line_error(*run_cli("split", narrow, "-o", target, "--neuron", "0", "--force"), fragment="is an input")
    assert narrow.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "folder", "devnull"])
def test_special_files_are_never_replaced(narrow, run_cli, kind, tmp_path):
    if kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    elif kind == "folder":
        target = tmp_path / "afolder"
        target.mkdir()
    else:
        target = "/dev/null"
    one_line_error(*run_cli("split", narrow, "-o", target, "--neuron", "0", "--force"), fragment="refusing to replace it")
    assert os.path.exists(target) and not os.path.isfile(target)


def test_impossible_output_locations_are_clear_errors(narrow, run_cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(*run_cli("split", narrow, "-o", tmp_path / "afile" / "wide.safetensors", "--neuron", "0"), fragment="is not a folder")
    one_line_error(*run_cli("split", narrow, "-o", tmp_path / ("w" * 300 + ".safetensors"), "--neuron", "0"), fragment="too long")
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        one_line_error(*run_cli("split", narrow, "-o", readonly / "wide.safetensors", "--neuron", "0"), fragment="not writable")


def test_trace_outputs_may_not_collide_or_swallow_inputs(narrow, run_cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli("trace", narrow, "--split", "neuron=0", "--steps", "3", "--out", out)
    assert code == 0, err
    one_line_error(*run_cli("trace", narrow, "--split", "neuron=0", "--steps", "3", "--out", out, "--plot", out / "narrow_final.safetensors", "--force"), fragment="would replace")
    one_line_error(*run_cli("trace", out / "narrow_final.safetensors", "--split", "neuron=0", "--steps", "3", "--out", out, "--force"), fragment="is an input of this command")
    assert (out / "narrow_final.safetensors").exists()
    (out / "notes.txt").write_text("mine")
    one_line_error(*run_cli("trace", narrow, "--split", "neuron=0", "--steps", "3", "--out", out, "--force"), fragment="did not write")
    assert (out / "notes.txt").read_text() == "mine"


def test_trace_output_set_is_replaced_as_a_whole(narrow, run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("trace", narrow, "--split", "neuron=0", "--steps", "4", "--out", out)[0] == 0
    first = json.loads((out / "series.json").read_text())["summary"]["steps"]
    assert run_cli("trace", narrow, "--split", "neuron=0", "--steps", "6", "--out", out, "--force")[0] == 0
    assert json.loads((out / "series.json").read_text())["summary"]["steps"] == 6 != first
    assert sorted(json.loads((out / "kktembed-outputs.json").read_text())["files"]) == sorted(p.name for p in out.iterdir() if p.name != "kktembed-outputs.json")
    assert not list(tmp_path.glob(f"run{PARTIAL}*"))


def test_kill_during_trace_leaves_the_previous_set_and_a_visible_partial(narrow, run_cli, tmp_path):
    out = tmp_path / "run"
    assert run_cli("trace", narrow, "--split", "neuron=0", "--steps", "4", "--out", out)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    command = [sys.executable, "-m", "kktembed", "trace", str(narrow), "--split", "neuron=0", "--steps", "10000000", "--save-every", "5", "--out", str(out), "--force"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "KKTEMBED_LOAD_PLUGINS": ""})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(p.glob("narrow_step_*") for p in tmp_path.glob(f"run{PARTIAL}*")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # the old set, untouched
    partials = list(tmp_path.glob(f"run{PARTIAL}*"))
    assert partials, "the killed run's partial folder should be visible"
    assert run_cli("trace", narrow, "--split", "neuron=0", "--steps", "4", "--out", out, "--force")[0] == 0
    assert not list(tmp_path.glob(f"run{PARTIAL}*"))  # stale partials of dead processes are removed


def test_stale_partial_files_are_removed_by_the_next_write(narrow, run_cli, tmp_path):
    stale = tmp_path / f"wide.safetensors{PARTIAL}999999999-abc"
    stale.write_bytes(b"half a file")
    assert run_cli("split", narrow, "-o", tmp_path / "wide.safetensors", "--neuron", "0")[0] == 0
    assert not stale.exists()
