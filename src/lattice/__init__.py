"""Lattice: a self-hosted control plane whose heart is a safe plugin platform."""

__all__ = ["__version__"]

__version__ = "0.1.0"
