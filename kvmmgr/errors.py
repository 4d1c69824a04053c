"""Errors that end a command, each with the exit status documented in the README."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILURE = 1  # a step of the startup path failed (download, kernel call, subprocess)
EXIT_CONFIG = 2  # bad configuration, input file or pod environment; nothing was changed
EXIT_NOT_RUNNING = 3  # status/shutdown: QEMU is not running
EXIT_FORCED = 4  # shutdown: the guest ignored ACPI and QEMU was quit hard
EXIT_NOT_READY = 5  # status --ready: QEMU runs, but the guest is not ready (READINESS)
EXIT_DEGRADED = 6  # status: QEMU runs, but a part the VM depends on is not as planned
EXIT_IN_USE = 7  # rebase: the VM runs, or another process has its disk open


class KvmManagerError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_status = EXIT_FAILURE

    def __str__(self) -> str:
        # One line, whatever the message quotes: a path or a file's words may hold newlines.
        return " ".join(super().__str__().splitlines())


class ConfigError(KvmManagerError):
    """A configuration value or input file is wrong; raised before any side effect."""

    exit_status = EXIT_CONFIG

    @classmethod
    def bad_value(cls, name: str, value: object, expected: str) -> ConfigError:
        return cls(f"{name}={short(value)}: expected {expected}")


class PreconditionError(KvmManagerError):
    """The pod lacks something the startup path needs (device, capability, program, writable
    directory); found before any side effect."""

    exit_status = EXIT_CONFIG


class InUseError(KvmManagerError):
    """The VM's disk is in use (the VM runs): changing it now would corrupt what it sees."""

    exit_status = EXIT_IN_USE


class StepError(KvmManagerError):
    """A step of the startup path failed while acting on the system."""


class CommandError(StepError):
    """A subprocess failed: carries the command, its exit status and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = self.stderr.splitlines()[-1] if self.stderr else "no error output"
        super().__init__(f"{' '.join(self.argv)} exited with status {returncode}: {detail}")


def short(value: object, limit: int = 100) -> str:
    """The value's repr, cut to `limit` characters: a message quotes what was given, not a
    megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
