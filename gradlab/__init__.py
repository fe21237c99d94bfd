"""gradlab: gradient flow and throughput of recurrent networks, scratch against cuDNN."""

__version__ = "0.1.0"
