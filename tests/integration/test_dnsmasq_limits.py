"""The search domains handed to dnsmasq always fit what dnsmasq accepts: checked with the real
dnsmasq (`--test` parses a configuration and exits), since a refused option would stop the
start halfway, after the network and the firewall were made."""

from __future__ import annotations

import dataclasses
import random
import subprocess
from pathlib import Path

from kvmmgr.net.dhcp import SEARCH_OPTION, SEARCH_OPTION_V6, dhcp_search, option119_size
from tests.unit.factories import plan, pod_facts


def dnsmasq_accepts(tmp_path: Path, domains: tuple[str, ...]) -> bool:
    config = tmp_path / "dnsmasq.conf"
    joined = ",".join(domains)
    config.write_text(f"port=0\nno-resolv\n{SEARCH_OPTION}{joined}\n{SEARCH_OPTION_V6}{joined}\n")
    done = subprocess.run(
        ["dnsmasq", "--test", f"--conf-file={config}"], capture_output=True, text=True, check=False
    )
    return done.returncode == 0


def test_a_kubernetes_list_is_cut_exactly_where_dnsmasq_would_refuse_it(tmp_path: Path) -> None:
    # Kubernetes allows 32 search domains; their shared suffix compresses, but not enough.
    search = tuple(f"team{n}.svc.cluster.local" for n in range(32))
    carried = dhcp_search(search)
    assert len(carried) == 27 and option119_size(carried) == 250
    assert dnsmasq_accepts(tmp_path, carried)
    assert not dnsmasq_accepts(tmp_path, search[:28])


def test_the_option_is_cut_where_dnsmasq_would_refuse_it(tmp_path: Path) -> None:
    unrelated = tuple(f"abcdefghijklmnopqrstuvw{n:02d}.q{n:02d}" for n in range(12))  # 31 bytes
    carried = dhcp_search(unrelated)
    assert len(carried) == 8 and option119_size(carried) == 248
    assert dnsmasq_accepts(tmp_path, carried)
    assert not dnsmasq_accepts(tmp_path, unrelated[:9])  # 279 bytes: exactly where we stop


def test_the_line_is_cut_where_dnsmasq_would_refuse_it(tmp_path: Path) -> None:
    # Long names with one long shared suffix: small once compressed, long as text.
    suffix = ".abcdefghijklmnopqrst.abcdefghijklmnopqrst.abcdefghijklmnopqrst"
    search = tuple(f"d{n}{suffix}" for n in range(40))
    carried = dhcp_search(search)
    assert 10 < len(carried) < 40
    assert dnsmasq_accepts(tmp_path, carried)
    assert not dnsmasq_accepts(tmp_path, search[: len(carried) + 1])


def test_whatever_the_list_we_keep_exactly_what_dnsmasq_accepts(tmp_path: Path) -> None:
    rng = random.Random(8)  # fixed: the same lists at every run
    suffixes = ["svc.cluster.local", "cluster.local", "corp.example.com", "example.com", "lan"]
    for _ in range(60):
        search = tuple(
            ".".join(
                ["".join(rng.choices("abcdefghij", k=rng.randint(1, 20)))] * rng.randint(1, 3)
                + [rng.choice(suffixes)]
            )
            for _ in range(rng.randint(1, 60))
        )
        search = tuple(dict.fromkeys(search))
        carried = dhcp_search(search)
        assert carried == search[: len(carried)]
        assert dnsmasq_accepts(tmp_path, carried), carried
        if len(carried) < len(search):  # and not a domain less than it would take
            assert not dnsmasq_accepts(tmp_path, search[: len(carried) + 1]), carried


def test_a_cut_list_is_a_warning_in_the_plan() -> None:
    search = tuple(f"abcdefghijklmnopqrstuvw{n:02d}.q{n:02d}" for n in range(12))
    facts = pod_facts()
    made = plan(None, dataclasses.replace(facts, dns=dataclasses.replace(facts.dns, search=search)))
    assert made.dhcp is not None
    assert f"{SEARCH_OPTION}{','.join(search[:8])}" in made.dhcp.config
    assert any("first 8 of the pod's 12 search domains" in note for note in made.notes)
    assert made.config_drive is not None  # the config drive keeps the whole list
    network = made.config_drive.network_config
    assert network is not None and network["networks"][0]["dns_search"] == list(search)
