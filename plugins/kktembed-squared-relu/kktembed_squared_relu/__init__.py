"""Example third-party kktembed plugin: squared-ReLU MLPs and the power split."""

__version__ = "0.1.0"
