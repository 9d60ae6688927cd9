"""dorl: domain-invariant white-blood-cell embeddings and cross-domain classifier benchmarks."""

__version__ = "0.1.0"
