"""Package exports and layering: each package of soar exports its public names from
`__init__` (loaded on first use) and imports only the layers its docstring allows."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SOAR = Path(__file__).resolve().parents[1] / "soar"

#: what each package may import from soar besides itself (its docstring says the same)
ALLOWED = {
    "protocols": {"records"},
    "ingest": {"protocols", "records", "hostport", "backoff", "timeconv"},
    "store": {"records", "spool", "backoff", "log", "timeconv", "processes"},
    "tracking": {"records", "protocols", "channels", "log"},
}
PACKAGES = [*ALLOWED, "web"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_is_its_modules_own(package: str) -> None:
    pkg = importlib.import_module(f"soar.{package}")
    assert pkg.__all__, f"soar.{package} exports nothing"
    for name in pkg.__all__:
        module = importlib.import_module(f"soar.{package}.{pkg._EXPORTS[name]}")
        assert getattr(pkg, name) is getattr(module, name), name
    with pytest.raises(AttributeError):
        _ = pkg.no_such_name


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_imports_none_of_its_modules(package: str) -> None:
    code = (
        f"import sys, soar.{package}; "
        f"print([m for m in sys.modules if m.startswith('soar.{package}.')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=SOAR.parent).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("package", list(ALLOWED))
def test_a_package_imports_only_the_layers_it_may(package: str) -> None:
    found: dict[str, str] = {}
    for path in sorted((SOAR / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "soar" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(parts[1], f"{path.name}:{node.lineno}")
    outside = {layer: where for layer, where in found.items() if layer not in ALLOWED[package]}
    assert not outside, f"soar.{package} imports {outside}"
