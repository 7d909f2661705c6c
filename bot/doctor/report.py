"""What `scrm doctor` finds: one `Check` per thing looked at, gathered in a `Report`."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One thing looked at: `ok` works, `warn` works but deserves a look, `fail` is broken; `fix` says what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.status == "warn"]

    @property
    def status(self) -> Status:
        return "fail" if self.failed else "warn" if self.warnings else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "failed": len(self.failed), "warnings": len(self.warnings),
                "checks": [check.to_dict() for check in self.checks]}


async def guarded(name: str, work: Awaitable[list[Check]]) -> list[Check]:
    """`work`'s checks; a check that itself breaks is a failed line, not a traceback that hides the others."""
    try:
        return await work
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure, it does not stop at one
        return [fail(name, f"doctor could not run this check: {type(exc).__name__}: {exc}",
                     "report this as a bug, with the line above")]
