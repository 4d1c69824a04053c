"""Where the VM's disks come from, parsed once: the base image (IMG_SOURCE: an http(s) URL,
or a local file, a file:// URL or an absolute path), and the data disks (VM_DATA_DISKS). Pure."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kvmmgr.errors import ConfigError


@dataclass(frozen=True)
class HttpSource:
    url: str

    @property
    def name(self) -> str:
        """The file name the URL ends in (query and fragment aside)."""
        return posixpath.basename(urlsplit(self.url).path.rstrip("/"))

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class LocalSource:
    path: Path
    given: str  # as written: a file:// URL or the path itself

    @property
    def name(self) -> str:
        """As written: a file:// URL's name is not unquoted (my%20disk.qcow2 stays so)."""
        written = self.given if self.given.startswith("/") else urlsplit(self.given).path
        return posixpath.basename(written.rstrip("/"))

    def __str__(self) -> str:
        return self.given


ImageSource = HttpSource | LocalSource


@dataclass(frozen=True)
class NewDisk:
    """A data disk made on the VM's volume (a qcow2), once, and kept."""

    size: int


@dataclass(frozen=True)
class PodDisk:
    """A data disk that the pod has: a block device or a file (a PVC in block or
    filesystem mode)."""

    path: Path


DataDiskSource = NewDisk | PodDisk


def parse_source(raw: str) -> ImageSource:
    parts = urlsplit(raw)
    if raw.startswith("/") and "\0" not in raw:
        return LocalSource(Path(raw), raw)
    if parts.scheme in {"http", "https"} and parts.netloc:
        return HttpSource(raw)
    if parts.scheme == "file" and parts.path.startswith("/"):
        return LocalSource(Path(unquote(parts.path)), raw)
    raise ConfigError.bad_value(
        "IMG_SOURCE", raw, "an http(s):// URL, a file:// URL or an absolute path"
    )
