from berg._version import __version__
