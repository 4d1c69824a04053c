"""The architecture, checked on the source (in the manner of test_no_shell.py): the planning
side (configuration, pod facts -> plan, every build_*) imports nothing that acts on the
system, and the image domain knows nothing of the network."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kvmmgr"
# Settings, facts and every builder of the plan, with what they need to compute.
PLANNING = (
    "kvmmgr.config", "kvmmgr.values", "kvmmgr.errors", "kvmmgr.facts", "kvmmgr.plan",
    "kvmmgr.net.model", "kvmmgr.net.nics", "kvmmgr.net.firewall", "kvmmgr.net.dhcp",
    "kvmmgr.net.dhcpguard", "kvmmgr.image.sources", "kvmmgr.image.disks", "kvmmgr.image.unpack",
    "kvmmgr.image.appliance", "kvmmgr.guest.cloudconfig", "kvmmgr.guest.formats",
    "kvmmgr.guest.drive", "kvmmgr.vm.qemu", "kvmmgr.vm.buses", "kvmmgr.vm.hardware",
    "kvmmgr.health.seen", "kvmmgr.health.check", "kvmmgr.documents", "kvmmgr.webconsole.plan",
)  # fmt: skip
# Modules that act: processes, sockets, the kernel's network, files on disk.
ACTING = {
    "subprocess", "socket", "fcntl", "shutil", "tempfile", "os", "pyroute2", "iptc", "pycdlib",
    "requests", "kvmmgr.system",
}  # fmt: skip
WRITES = {"write_text", "write_bytes", "mkdir", "unlink", "touch", "chmod", "symlink_to"}


def module_file(name: str) -> Path:
    path = PACKAGE.parent / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports(name: str) -> set[str]:
    """Every module `name` imports, anywhere in it (lazy imports in functions too)."""
    tree = ast.parse(module_file(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            for alias in node.names:  # `from kvmmgr.image import unpack` imports a module
                if module_file(f"{node.module}.{alias.name}").exists():
                    found.add(f"{node.module}.{alias.name}")
    return found


def _acts(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in ACTING)


@pytest.mark.parametrize("name", PLANNING)
def test_the_planning_side_imports_nothing_that_acts(name: str) -> None:
    seen = imports(name)
    assert not {m for m in seen if _acts(m)}, f"{name} imports modules that act"
    ours = {m for m in seen if m.startswith("kvmmgr.") and module_file(m).is_file()}
    ours = {m for m in ours if module_file(m).name != "__init__.py"}  # packages are empty
    assert ours <= set(PLANNING), f"{name} imports {ours - set(PLANNING)}, not planning"


@pytest.mark.parametrize("name", PLANNING)
def test_the_planning_side_writes_no_file(name: str) -> None:
    tree = ast.parse(module_file(name).read_text())
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not calls & (WRITES | {"open"}), name


def test_the_image_domain_knows_nothing_of_the_network() -> None:
    for path in (PACKAGE / "image").glob("*.py"):
        name = f"kvmmgr.image.{path.stem}"
        assert not {m for m in imports(name) if m.startswith("kvmmgr.net")}, name


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages an install takes: one missing from the list is
    missing from the image, which then fails at its first import of it."""
    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    found = {
        ".".join(init.parent.relative_to(PACKAGE.parent).parts)
        for init in PACKAGE.rglob("__init__.py")
    }
    assert found == listed
