"""A clock the test moves: passed where the code takes a `now` callable (the fake's, the budgets', the uploader's),
so windows and expiries are tested without sleeping."""

from __future__ import annotations


class Clock:
    def __init__(self, at: float = 1_800_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds
