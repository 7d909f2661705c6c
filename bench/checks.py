"""The tail every store benchmark prints: its correctness checks, one line each, and the run time."""

from __future__ import annotations

Check = tuple[str, bool]  # what was checked, and whether it held


def print_checks(checks: list[Check], elapsed_s: float) -> None:
    print("checks:")
    for name, passed in checks:
        print(f"  {'ok    ' if passed else 'FAILED'} {name}")
    print(f"run time {elapsed_s:.1f} s (setup included)")


def exit_status(checks: list[Check]) -> int:
    """0 when every check held: a benchmark whose figures come from a wrong result fails."""
    return 0 if all(passed for _name, passed in checks) else 1
