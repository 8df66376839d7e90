"""gc2bench: training-free visual-token compression benchmarks for high-resolution VLMs."""

__version__ = "0.1.0"
