"""rollguard: rolls bad ML model deployments back by itself."""

__version__ = "0.1.0"
