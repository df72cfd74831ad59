"""sae-genomics core: the science as a plain library (never imports dagster)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sae-genomics")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
