"""Import python-iptables and pyroute2 in milliseconds instead of a fraction of a second each.

python-iptables: at import, it looks for libxtables, libip4tc, libip6tc, libc and its own
libxtwrapper through ctypes.util.find_library, which runs `ldconfig -p` and, for a library
ldconfig does not know (libxtwrapper lives in site-packages), gcc and ld; it runs
`ldconfig -N -v` to find the xtables extensions; it imports distutils (setuptools' copy in a
virtualenv, itself slow) for a path it only needs as a last resort; and it runs `modprobe`
twice, which cannot work in a container (no CAP_SYS_MODULE, no modules on disk). Everything it
looks for sits in the system's library directory or next to the iptc package: we name those
places through the variables python-iptables documents (they stay set: its extensions are
loaded later, when rules are made), answer its find_library calls from the library directories
during the import, and replace its module loader before it runs. The node must have loaded
ip_tables itself; preflight checks that.

pyroute2: its package `__init__` imports every module it has (conntrack, IPDB, NDB, ethtool,
wireguard, ...) to re-export their names. We need IPRoute alone: the package is registered
without running its `__init__`, and IPRoute's module is imported into it. The package runs its
`__init__` only when a name it defines is first asked for (PEP 562), so a later plain
`from pyroute2 import X` still works.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any


def load_iproute() -> tuple[Any, Any]:
    """pyroute2's IPRoute class and its NetlinkError."""
    if "pyroute2" not in sys.modules:
        sys.modules["pyroute2"] = _lazy_package("pyroute2")
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    return IPRoute, NetlinkError


def _lazy_package(name: str) -> ModuleType:
    """The package `name` with its `__init__` not run yet. Asked for a submodule, it imports
    that alone (`from pyroute2 import config`, inside pyroute2); asked for any other name,
    it runs its `__init__` first, once (PEP 562)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, f"{name} is not installed"
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)

    def complete(attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        delattr(package, "__getattr__")
        loader.exec_module(package)
        return getattr(package, attribute)

    setattr(package, "__getattr__", complete)  # noqa: B010  (ModuleType declares one)
    return package


def load_iptc() -> ModuleType:
    if "iptc" in sys.modules:
        return sys.modules["iptc"]
    libdirs = library_dirs()
    xtables = find_versioned("xtables", libdirs)
    if xtables is not None:
        os.environ.setdefault("XTABLES_LIBDIR", str(xtables.parent / "xtables"))
        os.environ.setdefault("PYTHON_IPTABLES_XTABLES_VERSION", xtables.name.split(".so.")[1])
        os.environ.setdefault("IPTABLES_LIBDIR", f"{xtables.parent}:{_site_packages()}")
    with _find_library_in(libdirs), _without_distutils():
        util = _module_alone("iptc.util")
        # The package imports load_kernel from here, then calls it.
        setattr(util, "load_kernel", _no_modprobe)  # noqa: B010
        import iptc
    setattr(iptc, "util", util)  # noqa: B010  (loaded before its package, which did not)
    return sys.modules["iptc"]


def _module_alone(name: str) -> ModuleType:
    """Import `name` without its package (it must not import the package itself)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None, f"{name} is not installed"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _no_modprobe(name: str, exc_if_failed: bool = False) -> None:
    """python-iptables' load_kernel, minus the modprobe."""


def library_dirs() -> list[Path]:
    arch = sysconfig.get_config_var("MULTIARCH")
    named = [f"/usr/lib/{arch}", f"/lib/{arch}"] if arch else []
    candidates = (*named, "/usr/lib64", "/lib64", "/usr/lib", "/lib")
    return [Path(d) for d in candidates if Path(d).is_dir()]


def find_versioned(name: str, libdirs: list[Path]) -> Path | None:
    """lib<name>.so.<version>, as the dynamic loader would take it (the lowest name sorts
    first: libxtables.so.12 before libxtables.so.12.7.0)."""
    for libdir in libdirs:
        found = sorted(libdir.glob(f"lib{name}.so.*"), key=lambda p: len(p.name))
        if found:
            return found[0]
    return None


def _site_packages() -> Path:
    """Where pip puts libxtwrapper: beside the iptc package."""
    spec = importlib.util.find_spec("iptc")
    assert spec is not None and spec.origin is not None, "python-iptables is not installed"
    return Path(spec.origin).parent.parent


@contextmanager
def _find_library_in(libdirs: list[Path]) -> Iterator[None]:
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        found = find_versioned(name, libdirs)
        return found.name if found is not None else original(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = original


@contextmanager
def _without_distutils() -> Iterator[None]:
    """iptc.util falls back to sysconfig when distutils cannot be imported."""
    if "distutils" in sys.modules:
        yield
        return
    sys.modules["distutils"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["distutils"]
