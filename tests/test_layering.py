"""Every soar module says in its docstring what of soar it may import, and imports nothing else.

The line has one form, a paragraph of its own in the module's docstring:

    May import: soar.records, soar.tracking.geo

or `May import: nothing of soar`; a long list goes on over the next lines of the paragraph.
Each entry is a soar module or package, and a package covers its modules (except `soar` itself,
which names soar/__init__.py alone). Inside its own package a module names the siblings it
uses; outside it, the layer (`soar.store`, `soar.tracking`, `soar.config`). The standard library
and third-party packages are not listed. Imports made only for type checking or inside a
function count: they are dependencies all the same, merely deferred.

The lines may only name lower layers (`LAYERS`): protocols depend on the records alone, the
tracking core never on the store, the web or the process roles, and the command line is on top.
These read the source (ast); nothing is imported.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support import is_soar_module, private_soar_names

REPO = Path(__file__).resolve().parents[1]
SOAR = REPO / "soar"

#: soar's layers, lowest first, by top-level module or package. A module may import its own
#: package and anything in a lower layer; never a layer beside it or above it.
LAYERS: list[set[str]] = [
    {"soar", "records", "backoff", "hostport", "channels", "log", "spool", "runtime", "processes",
     "timeconv", "watermark"},  # leaves: no other part of soar
    {"protocols", "supervisor"},  # pure codecs on the records; supervision on the backoff
    {"config", "topology", "overflow"},
    {"ingest", "store", "tracking", "broker"},  # the feeds, PostgreSQL, the core, NATS
    {"live", "decode", "database"},
    {"ddb"},
    {"pipeline", "web"},  # the data path of a process; what it serves
    {"replay"},
    {"app", "split"},  # the process roles
    {"bench"},
    {"cli"},
    {"__main__"},
]

#: Imports that go up a layer today, each waiting for its module's owner. The set may only
#: shrink. Both reach for the command line's `UserError` and exit codes, which belong below
#: every command (a small module of their own), not in the module that dispatches to them.
KNOWN_UPWARD = {
    ("soar.replay", "soar.cli"),
    ("soar.bench.cli", "soar.cli"),
}

MAY_IMPORT = re.compile(r"^May import:(.*)$")
NOTHING = "nothing of soar"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {
        module_name(path): (path, ast.parse(path.read_text(), str(path)))
        for path in sorted(SOAR.rglob("*.py"))
        if "__pycache__" not in path.parts
    }
    assert {"soar", "soar.records", "soar.tracking.shard", "soar.web.api"} <= set(found)
    return found


def imported(name: str, path: Path, tree: ast.Module) -> dict[str, int]:
    """The soar modules `name` imports (a `from package import module` names the module), each
    with the line of its first import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if is_soar_module(f"{source}.{alias.name}")
                       else source for alias in node.names]
        for target in targets:
            if (target == "soar" or target.startswith("soar.")) and target != name:
                found.setdefault(target, node.lineno)
    return found


def may_import(tree: ast.Module) -> list[str] | None:
    """The entries of the docstring's `May import:` paragraph; None when there is none."""
    doc = ast.get_docstring(tree) or ""
    lines = doc.splitlines()
    for index, line in enumerate(lines):
        match = MAY_IMPORT.match(line)
        if match is None:
            continue
        text = match.group(1)
        for more in lines[index + 1:]:
            if not more.strip():
                break
            text += " " + more.strip()
        text = text.strip()
        return [] if text == NOTHING else [entry.strip() for entry in text.split(",")]
    return None


def covers(entry: str, module: str) -> bool:
    return module == entry or (entry != "soar" and module.startswith(entry + "."))


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "soar"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module}: {top} is in no layer of LAYERS (place it there)")


def test_every_module_docstring_says_what_it_may_import() -> None:
    missing, malformed = [], []
    for path, tree in modules().values():
        entries = may_import(tree)
        where = path.relative_to(REPO).as_posix()
        if entries is None:
            missing.append(where)
            continue
        bad = [e for e in entries if not re.fullmatch(r"soar(\.\w+)*", e) or not is_soar_module(e)]
        if bad or (not entries and NOTHING not in (ast.get_docstring(tree) or "")):
            malformed.append(f"{where}: {bad or 'empty'}")
    assert not missing, (
        f"modules whose docstring has no `May import:` line ({len(missing)}): {missing}")
    assert not malformed, (
        f"`May import:` entries that are not soar modules or packages (or `{NOTHING}`): "
        f"{malformed}")


def test_every_soar_import_is_one_its_module_may_make() -> None:
    outside = []
    for name, (path, tree) in modules().items():
        entries = may_import(tree)
        if entries is None:
            continue  # reported by the test above
        outside += [
            f"{path.relative_to(REPO).as_posix()}:{line} imports {target}"
            for target, line in sorted(imported(name, path, tree).items())
            if not any(covers(entry, target) for entry in entries)
        ]
    assert not outside, "imports their module's `May import:` line does not allow: " + "; ".join(
        outside)


def test_imports_and_lines_go_down_the_layers_only() -> None:
    upward = set()
    for name, (path, tree) in modules().items():
        own = layer_of(name)
        top = name.split(".")[:2]
        named = set(imported(name, path, tree)) | set(may_import(tree) or [])
        upward |= {
            (name, target) for target in named
            if target.split(".")[:2] != top and layer_of(target) >= own
        }
    assert not upward - KNOWN_UPWARD, (
        f"imports (or `May import:` entries) beside or above their module's layer: "
        f"{sorted(upward - KNOWN_UPWARD)}")
    assert not KNOWN_UPWARD - upward, (
        f"gone, remove from KNOWN_UPWARD: {sorted(KNOWN_UPWARD - upward)}")


def test_every_top_level_module_has_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in SOAR.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    placed = set().union(*LAYERS)
    assert tops | {"soar"} == placed, (
        f"not in LAYERS: {sorted(tops - placed)}; in LAYERS but gone: "
        f"{sorted(placed - tops - {'soar'})}")


def test_no_module_reads_another_modules_private_names() -> None:
    found = [
        f"{name}:{line} uses {private}"
        for name, (_, tree) in modules().items()
        for private, line in private_soar_names(tree).items()
        if private.rpartition(".")[0] != name
    ]
    assert not found, f"private names used outside their module (make them public): {found}"
