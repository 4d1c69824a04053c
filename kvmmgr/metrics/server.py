"""`kvm-manager metrics`: the VM's Prometheus metrics on http://POD:PORT/metrics, from a sidecar
that shares RUN_DIR, the pod's network and the VM container's environment. Each scrape reads
everything afresh (collector.py); between scrapes the server does nothing."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from kvmmgr import config, pod
from kvmmgr.errors import EXIT_OK, ConfigError, StepError
from kvmmgr.image.disks import build_disks
from kvmmgr.metrics.collector import VmCollector

log = logging.getLogger("kvmmgr")

DEFAULT_PORT = 9477
ADDRESS = "0.0.0.0"  # every IPv4 address of the pod, as QEMU's VNC
PATH = "/metrics"
CLIENT_TIMEOUT = 30.0  # seconds a client may take to send its request
STOP = {signal.SIGTERM, signal.SIGINT}


@dataclass(frozen=True)
class MetricsSettings:
    port: int
    vm: str  # the VM's name, as kvm-manager computes it from the same environment
    run_dir: Path
    base: Path  # the base image in the cache, to see a download of it under way


def load(env: Mapping[str, str], port: int | None) -> MetricsSettings:
    """`port`: --port, which wins over METRICS_PORT."""
    if port is not None and not 1 <= port <= config.MAX_PORT:
        raise ConfigError.bad_value("--port", port, f"a whole number from 1 to {config.MAX_PORT}")
    given = config.load_metrics_port(env)  # checked even when --port wins over it
    chosen = port or given or DEFAULT_PORT
    vm = pod.vm_name(config.load_vm(env))
    base = build_disks(config.load_image(env), vm).base
    return MetricsSettings(chosen, vm, config.run_dir_of(env), base)


def main(env: Mapping[str, str], port: int | None) -> int:
    settings = load(env, port)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VmCollector(settings.vm, settings.run_dir, settings.base))
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP)  # before any thread: they inherit the mask
    server = listen(settings.port, application(registry))
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics: VM %s on http://%s:%d%s", settings.vm, ADDRESS, settings.port, PATH)
    stopped = signal.sigwait(STOP)
    log.info("metrics: %s, stopping", signal.Signals(stopped).name)
    server.shutdown()
    server.server_close()
    return EXIT_OK


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a client that hangs does not keep the process from exiting


class _Quiet(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: a line per scrape would drown the sidecar's log."""


def listen(port: int, app: WSGIApplication) -> WSGIServer:
    try:
        return make_server(ADDRESS, port, app, server_class=_Server, handler_class=_Quiet)
    except OSError as exc:
        raise StepError(
            f"cannot listen on TCP port {port} for the metrics: {exc.strerror}"
        ) from exc


def application(registry: CollectorRegistry) -> WSGIApplication:
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"the metrics are on {PATH}\n".encode()]
        answer: Iterable[bytes] = metrics(environ, start_response)
        return answer

    return app
