"""The documentation site builds with `mkdocs build --strict`: a broken link or a missing page fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strictly_with_both_references(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    cli = (tmp_path / "cli-reference" / "index.html").read_text(encoding="utf-8")
    assert "scrm campaigns create" in cli and "--group-size" in cli  # generated from the click commands
    api = (tmp_path / "api-reference" / "index.html").read_text(encoding="utf-8")
    assert "POST /orders" in api and "OrderIn" in api  # generated from the OpenAPI document
