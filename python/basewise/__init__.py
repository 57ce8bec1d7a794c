"""basewise: fast, exact in-silico mutagenesis, attributions and attention maps for DNA models."""

__version__ = "0.1.0"
