"""xecjax: gamma-ray direction reconstruction for the MEG II liquid-xenon detector in JAX/Flax."""

__version__ = "0.1.0"
