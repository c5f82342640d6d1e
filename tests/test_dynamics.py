"""Paired training at library level (MATH.md §5): the fused step against a plain autograd reference,
the loss-scaled optimizer, snapshots, threads and devices."""

import math
from pathlib import Path

import pytest
import torch

from kktembed.data import load_network_and_data
from kktembed.dynamics import (
    TraceOptions,
    embedding_gather,
    paired_training,
    resolve_device,
    threads_for,
    torch_threads,
    training_objective,
)
from kktembed.errors import UsageError
from kktembed.kkt.margins import build_constraints, margins
from kktembed.losses import LOSSES, get_loss
from kktembed.network import Network, flatten_params
from kktembed.splitting import plan_from_spec

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CASES = {
    # name: (fixture, dataset, factor on θ(0), options of the reference comparison); the trained
    # multi-class network is scaled down so that its loss, and the steps, are not negligible
    "mlp_gd": ("paper_mlp_leaky", "gaussians", 1.0, dict(lr=0.1)),
    "mlp_sgd": ("paper_mlp_leaky", "gaussians", 1.0, dict(lr=0.1, batch=16)),
    "mlp_normalized": ("paper_mlp_leaky", "gaussians", 1.0, dict(lr=0.1, optimizer="normalized")),
    "mlp_sgd_normalized_logistic": ("paper_mlp_leaky", "gaussians", 1.0, dict(lr=0.1, batch=16, optimizer="normalized", loss="logistic")),
    "cnn_gd": ("paper_cnn", None, 1.0, dict(lr=0.01)),
    "cnn_normalized": ("paper_cnn", None, 1.0, dict(lr=0.01, optimizer="normalized")),
    "multiclass_sgd_logistic": ("mlp_multiclass_digits012", None, 0.3, dict(lr=0.05, batch=32, loss="logistic")),
    "multiclass_normalized": ("mlp_multiclass_digits012", None, 0.3, dict(lr=0.01, batch=32, optimizer="normalized")),
}


def load(name: str):
    fixture, dataset, factor, options = CASES[name]
    network, data = load_network_and_data(FIXTURES / f"{fixture}.safetensors", None, dataset)
    return network.with_params({key: factor * value for key, value in network.params.items()}), data, options


def reference_trajectory(networks: list[Network], data, steps: int, lr: float, loss="exp", batch=None, optimizer="gd", seed=0):
    """Each network on its own: margins by ``kktembed.kkt.margins`` (functional_call), 𝓛 = mean ℓ(q),
    torch.autograd.grad, and θ ← θ − rate·∇𝓛 parameter by parameter with rate = lr or lr/𝓛(θ).
    Identical seeded batches for all networks, drawn as trace draws them."""
    margin_loss = get_loss(loss)
    constraints = build_constraints(data.y, networks[0].output_dim)
    pairs = len(constraints) // data.n_samples
    states = [{key: value.clone().requires_grad_(True) for key, value in network.params.items()} for network in networks]
    stream = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        samples = None if batch is None else torch.randperm(data.n_samples, generator=stream)[:batch]
        for network, state in zip(networks, states):
            if samples is None:
                q = margins(network, data.x, constraints, state)
            else:
                rows = (samples.reshape(-1, 1) * pairs + torch.arange(pairs)).reshape(-1)
                subset = constraints.subset(rows)
                subset.sample = torch.arange(len(samples)).repeat_interleave(pairs)
                q = margins(network, data.x[samples], subset, state)
            value = margin_loss.mean(q)
            gradients = torch.autograd.grad(value, list(state.values()))
            rate = lr if optimizer == "gd" else lr / float(value.detach())
            with torch.no_grad():
                for tensor, gradient in zip(state.values(), gradients):
                    tensor -= rate * gradient
    return [{key: value.detach() for key, value in state.items()} for state in states]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_step_follows_the_plain_autograd_step(name):
    network, data, options = load(name)
    embedding = plan_from_spec(network, "copies=2")
    steps = 30
    result = paired_training(network, embedding, data, TraceOptions(steps=steps, every=10, **options))
    wide = Network(network.adapter, embedding.wide_config, embedding.apply(network.params))
    narrow_reference, wide_reference = reference_trajectory([network, wide], data, steps, **options)
    for trained, reference in ((result.narrow.params, narrow_reference), (result.wide.params, wide_reference)):
        difference = float((flatten_params(trained) - flatten_params(reference)).norm())
        assert difference <= 1e-12 * float(flatten_params(reference).norm()), (name, difference)
    # the parameters did move
    assert float((flatten_params(result.narrow.params) - flatten_params(network.params)).norm()) > 1e-6


@pytest.mark.parametrize("name", ["mlp_normalized", "mlp_sgd_normalized_logistic", "cnn_normalized", "multiclass_normalized"])
def test_normalized_identical_updates_keep_the_embedding(name):
    network, data, options = load(name)
    result = paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=200, every=10, **options))
    assert result.summary()["max_relative_trajectory_error"] < 1e-13
    assert result.records[-1]["loss_narrow"] == pytest.approx(result.records[-1]["loss_wide"], rel=1e-11)


def test_normalized_steps_grow_the_margin_faster_than_constant_ones():
    """lr/𝓛 grows as 𝓛 falls: after the same steps at the same lr, the loss-scaled run is further along."""
    network, data, _ = load("cnn_gd")
    embedding = plan_from_spec(network, "copies=2")
    constant, scaled = (paired_training(network, embedding, data, TraceOptions(steps=200, lr=0.01, every=50, optimizer=name)) for name in ("gd", "normalized"))
    assert scaled.records[-1]["loss_narrow"] < 1e-3 * constant.records[-1]["loss_narrow"]
    assert scaled.records[-1]["normalized_margin_narrow"] > constant.records[-1]["normalized_margin_narrow"]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_normalized_steps_stay_finite_after_the_loss_underflows(loss):
    """With a separating θ(0) scaled so that every ℓ(q_k) underflows to 0 (q_min > 745), the steps
    lr ∇log 𝓛 are still finite and still identical for both networks."""
    network, data, _ = load("multiclass_normalized")
    scaled = network.with_params({key: 20.0 * value for key, value in network.params.items()})
    result = paired_training(scaled, plan_from_spec(scaled, "copies=2"), data, TraceOptions(steps=20, lr=1e-4, loss=loss, every=5, optimizer="normalized"))
    assert result.records[0]["normalized_margin_narrow"] > 0 and result.records[-1]["loss_narrow"] == 0.0
    assert all(torch.isfinite(value).all() for value in result.narrow.params.values())
    moved = float((flatten_params(result.narrow.params) - flatten_params(scaled.params)).norm())
    assert moved > 1e-3
    assert result.summary()["max_relative_trajectory_error"] < 1e-13


def test_normalized_objective_is_log_of_the_mean_loss_up_to_log_n():
    q = torch.tensor([0.3, 1.7, -0.2, 5.0], dtype=torch.float64)
    for name in LOSSES:
        loss = get_loss(name)
        assert float(training_objective(loss, "normalized", q)) == pytest.approx(math.log(float(loss.mean(q))) + math.log(4), rel=1e-14)
        assert float(training_objective(loss, "gd", q)) == float(loss.mean(q))


def test_different_batches_break_the_embedding():
    network, data, _ = load("mlp_sgd")
    result = paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=200, lr=0.1, batch=16, different_batches=True))
    assert result.max_trajectory_error > 1e-4


@pytest.mark.parametrize("spec", ["copies=2", "ratio=0.3", "copies=3;strategy=net2net", "layer=0;neuron=0,1;ratio=0.2"])
def test_gather_form_of_t_is_t(spec):
    network, _, _ = load("cnn_gd")
    embedding = plan_from_spec(network, spec)
    index, scale = embedding_gather(embedding, network.params, list(embedding.apply(network.params)))
    theta = torch.randn(network.n_parameters, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(theta[index] * scale, embedding.apply_vector(theta), rtol=4e-16, atol=0)


def test_on_record_streams_the_rows_and_on_snapshot_saves_every_k_steps():
    network, data, _ = load("mlp_sgd")
    embedding = plan_from_spec(network, "copies=2")
    rows, snapshots = [], []

    def keep(step, theta, eta):
        snapshots.append((step, theta, eta))
        for value in (*theta.values(), *eta.values()):
            value.zero_()  # the callback owns its copies: training must not notice

    options = TraceOptions(steps=25, lr=0.1, batch=16, every=5, save_every=10)
    result = paired_training(network, embedding, data, options, on_record=rows.append, on_snapshot=keep)
    assert rows == result.records and [row["step"] for row in rows] == [0, 5, 10, 15, 20, 25]
    assert [step for step, _, _ in snapshots] == [10, 20, 25]
    assert set(snapshots[0][1]) == set(network.params) and set(snapshots[0][2]) == set(result.wide.params)
    assert all(value.device.type == "cpu" for value in snapshots[0][1].values())
    shorter = paired_training(network, embedding, data, TraceOptions(steps=10, lr=0.1, batch=16, every=5))
    again = []
    paired_training(network, embedding, data, options, on_snapshot=lambda step, theta, eta: again.append((step, theta, eta)))
    for key in network.params:
        assert torch.equal(again[0][1][key], shorter.narrow.params[key])
        assert torch.equal(again[-1][1][key], result.narrow.params[key])
    for key in result.wide.params:
        assert torch.equal(again[0][2][key], shorter.wide.params[key])
        assert torch.equal(again[-1][2][key], result.wide.params[key])
    paired_training(network, embedding, data, TraceOptions(steps=5, every=5), on_snapshot=lambda *args: pytest.fail("called with save_every 0"))


def test_thread_context_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_tiny_problems_train_on_one_thread_and_leave_the_setting_alone():
    network, data, _ = load("mlp_gd")
    before = torch.get_num_threads()
    result = paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=5))
    assert result.threads == 1 and torch.get_num_threads() == before
    assert threads_for(1e3, 8) == 1 and threads_for(1e12, 8) == 8
    explicit = paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=5, threads=2))
    assert explicit.threads == 2


@pytest.mark.parametrize(
    "options,fragment",
    [
        (dict(optimizer="adam"), "unknown optimizer 'adam'"),
        (dict(save_every=-1), "--save-every"),
        (dict(device="tpu"), "unknown device 'tpu'"),
        (dict(threads=0), "--threads"),
    ],
)
def test_bad_options_are_refused(options, fragment):
    with pytest.raises(UsageError) as error:
        TraceOptions(**options).validate(100)
    assert fragment in str(error.value)
    network, data, _ = load("mlp_gd")
    with pytest.raises(UsageError):
        paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=5, **options))


def test_auto_device_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")
    network, data, _ = load("mlp_gd")
    assert paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=5, device="auto")).device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["mlp_sgd", "cnn_normalized", "multiclass_sgd_logistic"])
def test_cuda_training_matches_the_cpu(name):
    network, data, options = load(name)
    embedding = plan_from_spec(network, "copies=2")
    on_gpu = paired_training(network, embedding, data, TraceOptions(steps=100, every=10, device="cuda", **options))
    on_cpu = paired_training(network, embedding, data, TraceOptions(steps=100, every=10, **options))
    assert on_gpu.device.startswith("cuda")
    assert all(value.device.type == "cpu" and value.dtype == torch.float64 for value in on_gpu.narrow.params.values())
    assert on_gpu.summary()["max_relative_trajectory_error"] < 1e-13
    reference = flatten_params(on_cpu.narrow.params)
    assert float((flatten_params(on_gpu.narrow.params) - reference).norm()) <= 1e-11 * float(reference.norm())


def test_trace_figure_draws_the_kkt_residuals_in_a_fourth_panel(tmp_path):
    import matplotlib.pyplot as plt

    from kktembed.plotting import plot_trace, trace_figure

    network, data, _ = load("cnn_gd")
    result = paired_training(network, plan_from_spec(network, "copies=2"), data, TraceOptions(steps=400, lr=0.01, every=50, kkt_every=200))
    assert [r["step"] for r in result.records if "relative_stationarity_narrow" in r] == [200, 400]
    figure = trace_figure(result.records)
    try:
        labels = [axis.get_ylabel() for axis in figure.axes]
        assert labels == [r"$\|\eta(t) - T\theta(t)\|_2$", r"loss $\mathcal{L}$", r"$\bar\gamma = q_{\min} / \|\theta\|^L$", r"$\varepsilon / \|\hat\theta\|$"]
        assert all(axis.get_xlabel() == "step" for axis in figure.axes)
        assert [axis.get_yscale() for axis in figure.axes] == ["log", "log", "linear", "log"]
        assert list(figure.axes[3].lines[0].get_xdata()) == [200, 400]
    finally:
        plt.close(figure)
    without = trace_figure([{k: v for k, v in r.items() if "stationarity" not in k} for r in result.records])
    assert len(without.axes) == 3
    plt.close(without)
    assert plot_trace(result.records, tmp_path / "trace.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
