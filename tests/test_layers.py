"""Imports point down only: the layer table of docs/architecture.md, enforced.

Each module of s3fuse belongs to one layer; it may import modules of lower layers and
of its own package, never of a higher layer. TYPE_CHECKING-only imports count too
(a type from above is a dependency on above). A new module must be placed here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "s3fuse"

#: Layer of each module or package (the longest matching dotted prefix wins), bottom up.
LAYERS: dict[str, int] = {
    # 0: shared vocabulary, imports nothing of ours (but each other)
    "errors": 0, "model": 0, "names": 0, "logs": 0, "redact": 0, "notify": 0,
    "printable": 0, "posix": 0,
    "__init__": 0,
    # 1: configuration and plumbing: the local-database layer, the supervisor, small utilities
    "config": 1, "util": 1, "db": 1,
    # 2: local machinery with no S3 in it: caches, archive indexing
    "cache": 2, "cache.identity": 2, "archive": 2, "archive.published": 2,
    # 3: the S3 boundary
    "store": 3,
    # 4: bytes and records built on the store and the caches
    "data": 4, "manifest": 4, "upload": 4,
    # 5: namespaces
    "tree": 5, "tree.sharedindex": 5,
    # 6: the FUSE adapter, jobs over namespaces, the idle query
    "fs": 6, "pinning": 6, "idle": 6,
    # 7: the control plane (status, pins, uploads through root xattrs), metrics
    "control": 7, "metrics": 7,
    # 8: lifecycle and tools
    "daemon": 8, "mounts": 8, "cachetool": 8, "service": 8,
    # 9-11: entry points
    "demo": 9, "fstab": 9, "cli": 10, "mounthelper": 11, "__main__": 11,
}


def layer_of(module: str) -> int:
    """The layer of a dotted module name relative to the package ('tree.bucket')."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    raise KeyError(module)


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def imported(module: str, path: Path) -> set[str]:
    """The s3fuse modules `module` imports, as dotted names relative to the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "s3fuse":
                target = node.module.split(".")[1:]
            else:
                continue
            if not node.module:  # from . import x: x is a module of the package, or a name
                for alias in node.names:  # of its __init__
                    module_path = PACKAGE.joinpath(*target, alias.name)
                    is_module = module_path.with_suffix(".py").exists() or module_path.is_dir()
                    names.add(".".join([*target, alias.name] if is_module else target or ["__init__"]))
            else:
                names.add(".".join(target) if target else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "s3fuse":
                    names.add(".".join(alias.name.split(".")[1:]) or "__init__")
    return names


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module, _ in modules():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in LAYERS (and docs/architecture.md): {unplaced}"


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    own = layer_of(module)
    top = module.split(".")[0]
    upward = []
    for target in imported(module, path):
        if target.split(".")[0] == top:
            continue  # within one package: its modules form one layer
        if layer_of(target) > own or (layer_of(target) == own and own > 0):
            upward.append(target)
    assert not upward, f"{module} (layer {own}) imports {sorted(upward)} from its layer or above"
