"""lematt: keep every TLS certificate of an organisation fresh, from three small config files."""

__version__ = "0.1.0"
