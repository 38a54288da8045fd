"""harstream: real-time activity recognition over MQTT with jit-compiled JAX/Flax models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("harstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
