"""malmm: understand long videos on one GPU with MA-LMM (the command-line application)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("malmm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
