"""The suite's own layout: `tests/` is a package, its helpers are imported as package modules
(`tests.support`, `tests.faults.faultkit`, ...), nothing edits `sys.path`, the pure tests import
no PostgreSQL driver, and tests reach soar only through its public names.

These read the source (ast), not the running suite, so a helper imported by its bare name
fails here even when some other test happened to put its folder on the path first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import private_soar_names

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

#: Private soar names tests still import, each waiting for its module's owner to make it public
#: (or to give the test another way in). The list may only shrink: a new entry is a new
#: dependency on soar's insides, and an entry no longer used must be removed.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


def sources() -> dict[str, ast.Module]:
    found = {
        path.relative_to(REPO).as_posix(): ast.parse(path.read_text(), str(path))
        for path in sorted(TESTS.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    assert "tests/support.py" in found and "tests/conftest.py" in found
    return found


def test_every_test_folder_is_a_package() -> None:
    folders = {path.parent for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts}
    assert folders >= {TESTS, TESTS / "web", TESTS / "faults"}
    missing = sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders of tests without __init__.py: {missing}"


def test_nothing_touches_sys_path() -> None:
    edits = [
        f"{name}:{node.lineno}"
        for name, tree in sources().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path"
    ]
    assert not edits, f"sys.path used (import helpers as tests.<folder>.<module>): {edits}"


def test_helpers_are_imported_as_package_modules() -> None:
    # Every module and folder name under tests/: imported bare, it only resolves when its
    # folder is on sys.path, which it no longer is.
    local = {p.stem for p in TESTS.rglob("*.py")} | {p.name for p in TESTS.iterdir() if p.is_dir()}
    local -= {"tests", "__init__"}
    bare = []
    for name, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            bare += [f"{name}:{node.lineno} {m}" for m in modules if m.split(".")[0] in local]
    assert not bare, f"test helpers imported by a bare name: {bare}"


def private_imports() -> set[tuple[str, str]]:
    """(test file, soar.module._name) for every private soar name a test imports, or reads
    as an attribute of a soar module it imported (`from soar import runtime`; `runtime._x`)."""
    return {(name, private) for name, tree in sources().items()
            for private in private_soar_names(tree)}


def test_no_new_private_imports_from_soar() -> None:
    found = private_imports()
    assert not found - KNOWN_PRIVATE_IMPORTS, (
        f"tests import private soar names (make them public in soar, or test through the "
        f"public API): {sorted(found - KNOWN_PRIVATE_IMPORTS)}"
    )
    assert not KNOWN_PRIVATE_IMPORTS - found, (
        f"no longer imported, remove from KNOWN_PRIVATE_IMPORTS: "
        f"{sorted(KNOWN_PRIVATE_IMPORTS - found)}"
    )


#: Test modules other test modules import helpers from, waiting for their owner to move those
#: helpers into the folder's helper module. May only shrink.
KNOWN_TEST_MODULE_IMPORTS: set[tuple[str, str]] = set()


def test_helpers_are_not_imported_from_test_modules() -> None:
    # A helper in a test module is found only by whoever reads that test; its folder's helper
    # module (or tests.support) is where the next test looks for it.
    found = set()
    for name, tree in sources().items():
        package = ".".join(Path(name).parent.parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = f"{package}.{node.module}" if node.level == 1 else node.module
                if module.rpartition(".")[2].startswith("test_"):
                    found.add((name, module))
    assert not found - KNOWN_TEST_MODULE_IMPORTS, (
        f"helpers imported from test modules (move them to a helper module): "
        f"{sorted(found - KNOWN_TEST_MODULE_IMPORTS)}")
    assert not KNOWN_TEST_MODULE_IMPORTS - found, (
        f"gone, remove from KNOWN_TEST_MODULE_IMPORTS: "
        f"{sorted(KNOWN_TEST_MODULE_IMPORTS - found)}")


def test_the_shared_conftest_imports_no_database_driver() -> None:
    # The pure tests (protocols, codecs) run without psycopg: the DB fixtures import it themselves.
    probe = "import sys, tests.conftest; print(sorted(m for m in sys.modules if m.startswith('psycopg')))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
