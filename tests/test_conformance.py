"""The conformance kit on the built-in adapters, and on deliberately broken ones."""

import pytest
import torch

from kktembed.adapters.base import UnitLayer, UnitSlice
from kktembed.adapters.builtin import kktembed_detect_adapter
from kktembed.adapters.mlp import MLPAdapter
from kktembed.plugins import adapters
from kktembed.testing import adapter_report, assert_adapter_conforms

from helpers import CNN_CONFIG
from test_adapters import BiasedMLP


@pytest.mark.parametrize(
    "config,hints",
    [
        ({"widths": [4, 5, 3, 1], "activation": "relu", "first_layer_bias": True}, {}),
        ({"widths": [4, 5, 3], "activation": "leaky_relu:0.2", "first_layer_bias": False}, {"activation": "leaky_relu:0.2"}),
        ({"widths": [4, 2, 1], "activation": "identity", "first_layer_bias": False}, {"activation": "identity"}),
    ],
)
def test_builtin_mlp_conforms(config, hints):
    report = assert_adapter_conforms(adapters()["mlp"], config, detect=kktembed_detect_adapter, detect_hints=hints)
    assert [status for _, status, _ in report.results].count("ok") == len(report.results)


@pytest.mark.parametrize("strategy", ["isometric", "net2net"])
def test_builtin_cnn_conforms(strategy):
    hints = {"arch_config": {"padding": [1, 0], "pool": ["avg:2", "max:2"]}, "input_shape": (2, 6, 6)}
    assert_adapter_conforms(adapters()["cnn"], CNN_CONFIG, strategy=strategy, detect=kktembed_detect_adapter, detect_hints=hints)


def test_missing_detection_is_reported_as_skipped():
    report = adapter_report(adapters()["mlp"], {"widths": [3, 2, 1], "activation": "relu", "first_layer_bias": False})
    assert ("detection", "skipped", "no detect function given") in report.results and report.ok


def test_later_layer_bias_fails_with_a_clear_message():
    with pytest.raises(AssertionError, match=r"homogeneity: not homogeneous of the declared degree L=2"):
        assert_adapter_conforms(BiasedMLP(), {"widths": [3, 4, 1], "activation": "relu", "first_layer_bias": False})


class ForgetsOutgoing(MLPAdapter):
    """Broken unit description: the outgoing columns are left out of the first hidden layer."""

    name = "forgets-outgoing"

    def units(self, config):
        first, *rest = super().units(config)
        return [UnitLayer(first.name, first.width, first.incoming, (UnitSlice("2.weight", axis=0),)), *rest]


def test_incomplete_unit_description_fails():
    report = adapter_report(ForgetsOutgoing(), {"widths": [3, 4, 2, 1], "activation": "relu", "first_layer_bias": False})
    assert not report.ok
    assert any("units" in failure and "2.weight" in failure for failure in report.failures)


class WrongAxis(MLPAdapter):
    """Broken unit description: the first layer's outgoing slice on the wrong axis of a square matrix."""

    name = "wrong-axis"

    def units(self, config):
        first, *rest = super().units(config)
        return [UnitLayer(first.name, first.width, first.incoming, (UnitSlice("2.weight", axis=0),)), *rest]


def test_wrong_slices_fail_the_split_checks():
    report = adapter_report(WrongAxis(), {"widths": [3, 4, 4, 1], "activation": "relu", "first_layer_bias": False})
    assert any(failure.startswith("split 0[") and "shapes" in failure for failure in report.failures), report.failures
    assert ("round trip", "ok", "") in report.results  # an unregistered adapter still round-trips
