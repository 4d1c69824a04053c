"""The console's server process, as the startup path starts it (plan.WebConsolePlan.argv):
it takes the listening socket it was given, gives up root for good (QEMU's user, no
capability), and serves until SIGTERM, or until the VM's QEMU ends."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import encodings.idna  # noqa: F401 (imported while root: QEMU's user may not read root's Python)
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from kvmmgr.errors import KvmManagerError
from kvmmgr.facts import Identity
from kvmmgr.system import privileges
from kvmmgr.webconsole.server import ConsoleServer

PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="kvm-manager: %(message)s")
    listener = socket.socket(fileno=args.fd)
    name, uid, gid = args.user.rsplit(":", 2)
    groups = [int(g) for g in args.groups.split(",") if g]
    try:
        privileges.drop(Identity(name, int(uid), int(gid)), groups, "the web console")
    except KvmManagerError as exc:
        print(f"kvm-manager: web console: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.parent and not _ends_with(args.parent):
        return 0  # QEMU is gone already
    host, port = args.upstream.rsplit(":", 1)
    server = ConsoleServer(listener, Path(args.files), (host, int(port)))
    signal.signal(signal.SIGTERM, _stop)
    with open(args.ready, "wb") as ready:
        ready.write(b"ready\n")
    with contextlib.suppress(SystemExit):  # SIGTERM's way out of the loop
        server.serve_forever()
    return 0


def _ends_with(parent: int) -> bool:
    """SIGTERM when `parent` ends (set after the drop: a change of user clears it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmmgr.webconsole")
    parser.add_argument("--of", required=True, help="the RUN_DIR of the VM it shows")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket")
    parser.add_argument("--ready", type=int, required=True, help="where to say it serves")
    parser.add_argument("--files", required=True)
    parser.add_argument("--upstream", required=True, help="QEMU's WebSocket, HOST:PORT")
    parser.add_argument("--user", required=True, help="NAME:UID:GID")
    parser.add_argument("--groups", default="")
    parser.add_argument("--parent", type=int, default=None)
    return parser


if __name__ == "__main__":
    sys.exit(main())
