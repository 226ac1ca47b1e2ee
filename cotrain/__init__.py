"""cotrain: co-schedule latency-critical inference and training on one edge accelerator."""

__version__ = "0.1.0"
