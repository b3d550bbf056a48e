"""soar: a real-time aircraft tracker on trio."""

__version__ = "0.1.0"
