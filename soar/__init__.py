"""soar, a real-time aircraft tracker on trio: this module owns only the version (`__version__`).

Every part of soar is a module or package of its own beneath it; docs/architecture.md maps them.

May import: nothing of soar
"""

__version__ = "0.1.0"
