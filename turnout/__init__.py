"""turnout: serve machine-learning models safely on Kubernetes."""

__version__ = "0.1.0"
