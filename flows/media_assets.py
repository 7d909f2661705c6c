"""A say step's media (`image:`, `file:`, `voice:`, `video:`): a file of the flow directory or an https URL.

Checked in two of the loader's steps, so a broken flow never reaches a customer:

* the schema (step 1) reads the text: an https URL, or a path relative to the flow directory that
  cannot leave it (no absolute path, no `..`), in a format both WeCom and the OA take for the kind;
* the semantic step (3), when the loader is given the directory, looks at the file itself: it
  exists, it is a regular file inside the directory once symbolic links are followed, and it is
  within the kind's upload limit.

A release read back from the store is loaded without the directory (its files were checked when it
was published). The sender reads the files from the configured flow directory (bot/media_uploads.py)
through the same `asset_path`, so what was checked is what is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from core.content import MediaKind
from flows.yaml_source import human_size

MEDIA_KEYS: tuple[MediaKind, ...] = ("image", "file", "voice", "video")
MIB = 1024 * 1024
# media/upload's limits (WeCom document 90253; the OA's the same for image, voice and video); "file" is WeCom's.
SEND_LIMITS: dict[str, int] = {"image": 10 * MIB, "voice": 2 * MIB, "video": 10 * MIB, "file": 20 * MIB}
MIN_BYTES = 5  # "所有文件size必须大于5个字节"
# Formats both platforms take (the OA also takes GIF images and MP3 voice, WeCom does not); a file may be anything.
FORMATS: dict[str, frozenset[str] | None] = {
    "image": frozenset({"jpg", "jpeg", "png"}), "voice": frozenset({"amr"}), "video": frozenset({"mp4"}), "file": None,
}
_URL = re.compile(r"https://[^\s/?#]+[^\s]*")


def is_url(source: str) -> bool:
    return "://" in source


def source_problem(kind: str) -> Callable[[str], str | None]:
    """What is wrong with the text of `kind: …` (None when nothing is), for flows/schema.py."""

    def problem(text: str) -> str | None:
        if is_url(text):
            if not text.lower().startswith("https://"):
                return f"{kind} {text!r} is not an https URL: media come from the flow directory or an https link"
            return None if _URL.fullmatch(text) else f"{kind} {text!r} is not a URL"
        return _path_problem(kind, text)

    return problem


def _path_problem(kind: str, text: str) -> str | None:
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or re.match(r"[A-Za-z]:", text):
        return f"{kind} {text!r} must be a path relative to the flow directory, e.g. assets/logo.png"
    if ".." in path.parts:
        return f"{kind} {text!r} leaves the flow directory (..): keep media inside it, e.g. assets/logo.png"
    formats = FORMATS[kind]
    if formats is not None and path.suffix.lower().lstrip(".") not in formats:
        return f"a {kind} must be {' or '.join(sorted(formats))} (WeChat takes no other), not {text!r}"
    return None


def asset_path(directory: Path, source: str) -> Path:
    """The file a relative source names, symbolic links followed; ValueError when that is outside `directory`."""
    root = directory.resolve()
    target = (root / source).resolve()
    if not target.is_relative_to(root):
        raise ValueError(f"{source!r} leads outside the flow directory {directory}")
    return target


def asset_problem(directory: Path, source: str, kind: str) -> str | None:
    """What is wrong with the file a say step sends (None when nothing is), for flows/checks.py."""
    try:
        path = asset_path(directory, source)
        if not path.is_file():
            missing = "is not a file" if path.exists() else "does not exist"
            return f"{kind} {source!r} {missing} in the flow directory {directory}: add it, or fix the path"
        size = path.stat().st_size
    except ValueError as exc:
        return f"{kind} {exc} (a symbolic link?): keep media inside the flow directory"
    except OSError as exc:
        return f"{kind} {source!r} cannot be read: {exc.strerror or exc}"
    if size > SEND_LIMITS[kind]:
        return f"{kind} {source!r} is {human_size(size)}; WeChat takes at most {human_size(SEND_LIMITS[kind])}"
    if size <= MIN_BYTES:
        return f"{kind} {source!r} is {size} bytes: WeChat takes only files larger than {MIN_BYTES} bytes"
    return None
