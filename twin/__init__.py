"""APN digital twin: regional data centres over an All-Photonics Network."""

__version__ = "0.1.0"
