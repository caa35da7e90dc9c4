"""relu2snn: exact conversion of trained ReLU networks into single-spike TTFS spiking networks."""

__version__ = "0.1.0"
