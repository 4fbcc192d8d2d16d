"""Visual inspection by anomaly detection: data, backbones, methods, metrics and thresholds."""

__version__ = "0.1.0"
