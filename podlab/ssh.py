"""SSH into a real guest from the node namespace, with a key pair made for the test: the
guest's cloud-init installs the public key (metadata `public_keys`), which the login proves.

    keys = KeyPair.create(tmp_path)
    guest = Ssh(lab.net.node, lab.net.pod_ip, keys)
    guest.wait(120)
    print(guest.run("cloud-init status --long"))
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from podlab.netns import Namespace, sh

USER = "debian"  # Debian's default cloud user


@dataclass(frozen=True)
class KeyPair:
    private: Path

    @classmethod
    def create(cls, folder: Path) -> KeyPair:
        private = folder / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kvmtest", "-f", str(private))
        return cls(private)

    @property
    def public(self) -> str:
        return self.private.with_suffix(".pub").read_text().strip()


@dataclass(frozen=True)
class Ssh:
    ns: Namespace  # where the ssh client runs
    host: str
    keys: KeyPair
    user: str = USER

    def argv(self, command: str) -> list[str]:
        return self.ns.argv(
            "ssh", "-i", str(self.keys.private), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
            f"{self.user}@{self.host}", command,
        )  # fmt: skip

    def call(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def run(self, command: str, timeout: float = 60) -> str:
        """The command's stdout; RuntimeError with its stderr when it fails."""
        done = self.call(command, timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"ssh {self.user}@{self.host} {command!r}: exit {done.returncode}: "
                f"{done.stderr.strip()}"
            )
        return done.stdout

    def wait(self, timeout: float) -> None:
        """Until a login with the key works."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.call("true", timeout=30)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SSH login to {self.host} in {timeout:g} s: {done.stderr}")
            time.sleep(1)
