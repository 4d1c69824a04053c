"""The fast imports of pyroute2 and python-iptables, and the checks around the firewall that
depend on what the kernel has: each import runs in a fresh interpreter, as kvm-manager does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmmgr.errors import PreconditionError
from kvmmgr.net.iptables import _ip6_tables_in_use
from kvmmgr.preflight import check
from kvmmgr.system.libload import find_versioned
from tests.unit.factories import plan

REPO = Path(__file__).resolve().parents[2]
# Records every process the interpreter starts, then does `code`, then prints what it saw.
WATCHED = """
import json, sys
started = []
sys.addaudithook(lambda event, args: started.append(event) if event in
    {"subprocess.Popen", "os.exec", "os.posix_spawn", "os.system"} else None)
{code}
print(json.dumps({"started": started, "modules": sorted(sys.modules)}))
"""


def run_fresh(code: str) -> dict[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", WATCHED.replace("{code}", code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_pyroute2_gives_iproute_alone_and_its_package_later() -> None:
    seen = run_fresh(
        "from kvmmgr.system.libload import load_iproute\n"
        "IPRoute, NetlinkError = load_iproute()\n"
        "assert 'pyroute2.ndb.main' not in sys.modules and 'pyroute2.ipdb' not in sys.modules\n"
        "import pyroute2, pyroute2.iproute\n"
        "assert pyroute2.iproute.linux.IPRoute is IPRoute\n"
        "from pyroute2 import IPRoute as Public, NetlinkError as PublicError\n"
        "assert Public is IPRoute and PublicError is NetlinkError\n"
    )
    assert "pyroute2.ndb.main" in seen["modules"]  # the package's __init__ ran when asked


def test_python_iptables_imports_without_starting_any_process() -> None:
    seen = run_fresh(
        "from kvmmgr.system.libload import load_iptc\n"
        "iptc = load_iptc()\n"
        "assert iptc.util.load_kernel.__name__ == '_no_modprobe'\n"
        "assert iptc.Rule().create_target('ACCEPT') is not None\n"  # an extension loads
    )
    assert seen["started"] == []  # no ldconfig, gcc or modprobe
    assert "distutils" not in seen["modules"]


def test_plain_python_iptables_would_start_processes() -> None:
    assert run_fresh("import iptc\n")["started"] != []  # what the loader avoids


def test_versioned_library_names_as_the_loader_takes_them(tmp_path: Path) -> None:
    for name in ("libxtables.so.12.7.0", "libxtables.so.12", "libip4tc.so.2"):
        (tmp_path / name).touch()
    assert find_versioned("xtables", [tmp_path]) == tmp_path / "libxtables.so.12"
    assert find_versioned("ip6tc", [tmp_path]) is None


def test_ip6tables_cleanup_only_where_ip6tables_was_used(tmp_path: Path) -> None:
    names = tmp_path / "ip6_tables_names"
    names.write_text("")
    assert not _ip6_tables_in_use(names)  # a fresh pod: no child process needed
    names.write_text("filter\n")
    assert _ip6_tables_in_use(names)
    assert _ip6_tables_in_use(tmp_path / "missing")  # cannot tell: look


def test_preflight_wants_the_ip_tables_module_loaded(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("CapEff:\t000001ffffffffff\n")
    with pytest.raises(PreconditionError, match="the ip_tables kernel module"):
        check(plan(), (), status_file=status, proc_net=tmp_path)
