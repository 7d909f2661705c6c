"""`scrm media ...`: what customers sent (images, voice notes, videos, files), and a copy of one as a file.

The rows are crm_store.media_items' (one per item received, pending until bot/media_fetch.py
has kept it); the bytes are in the media store the `media:` section describes. A customer's
file name is data: a file written here is named by its last component only, never a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import click

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from bot.settings import Settings
from core.content import Media, MediaKind
from crm_store.media_items import MediaLine, MediaStatus, media_line, received
from crm_store.media_store import (
    MediaError,
    MediaNotFound,
    MediaStoreUnavailable,
    build_media_store,
    clean_filename,
)

STDOUT = "-"


def human_size(size: int | None) -> str:
    """1234567 → 1.2 MB (powers of 1024, as the media.max_bytes limits are); "-" when not known yet."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def where_kept(settings: Settings) -> str:
    """The media store as people read it (`local var/media`, `s3 bucket/prefix`); nothing is contacted."""
    return build_media_store(settings.media).describe()


def _state(line: MediaLine) -> str:
    """Where a stored item is, why a failed one is not, how a pending one is doing."""
    if line.status == "stored":
        return line.key or ""
    if line.status == "failed":
        return line.last_error or "failed"
    tried = f"attempt {line.attempts}" if line.attempts else "not tried yet"
    return f"{tried}: {line.last_error}" if line.last_error else tried


def media_table(lines: Sequence[MediaLine], with_customer: bool = False) -> str:
    rows = [[f"#{line.id}", *([line.customer_id] if with_customer else []), line.kind, human_size(line.size),
             when(line.received_at), line.status, line.filename or "-", _state(line)] for line in lines]
    return table(rows, ["id", *(["customer"] if with_customer else []), "kind", "size", "received", "status",
                        "name", "stored as / why not"])


def media_data(lines: Sequence[MediaLine], where: str) -> list[dict[str, Any]]:
    """The JSON of each line, with the store it is in once stored."""
    return [asdict(line) | {"where": where if line.status == "stored" else None} for line in lines]


@cli.group("media")
def media_group() -> None:
    """What customers sent (images, voice, video, files): list it, save a copy of one."""


@media_group.command("list")
@click.option("--customer", "customer_id", type=int, metavar="ID",
              help="Only this customer's (and of the customers merged into them).")
@click.option("--status", type=click.Choice(get_args(MediaStatus)), help="Only pending, stored or failed items.")
@click.option("--kind", type=click.Choice(get_args(MediaKind)), help="Only this kind.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_context
def list_media(ctx: click.Context, customer_id: int | None, status: MediaStatus | None, kind: str | None,
               limit: int, as_json: bool) -> None:
    """Received media, newest first: kind, size, when, status, and where each is kept or why it is not.

    Example: scrm media list --customer 42   or   scrm media list --status failed --json
    """
    settings = settings_of(ctx)
    lines = in_store(settings, lambda session: received(session, customer_id=customer_id, status=status,
                                                         kind=kind, limit=limit))
    if as_json:
        echo_json(media_data(lines, where_kept(settings)))
    elif not lines:
        click.echo("no media match" if customer_id or status or kind else "no media received yet")
    else:
        click.echo(f"kept in {where_kept(settings)}; save one with: scrm media get ID")
        click.echo(media_table(lines, with_customer=customer_id is None))


@media_group.command("get")
@click.argument("item_id", metavar="ID", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="The file to write, or - for standard output (default: in the current directory, the name "
                   "the customer gave it, else ID.EXT from its type).")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@click.pass_context
def get_media(ctx: click.Context, item_id: int, output: Path | None, force: bool) -> None:
    """Save a copy of a received item (an id from scrm media list or scrm customers show).

    Example: scrm media get 7 -o receipt.jpg   or   scrm media get 7   (writes ./合同.pdf, or ./7.jpg)
    """
    settings = settings_of(ctx)
    line = in_store(settings, lambda session: media_line(session, item_id))
    if line is None:
        raise click.ClickException(f"no media item {item_id} (list them with: scrm media list)")
    key = _stored_key(line)
    path = output or Path(default_filename(line))
    to_stdout = str(path) == STDOUT
    if not to_stdout and path.exists() and not force:
        raise _exists(path)
    data = _read(settings, line, key)
    if to_stdout:
        click.echo(data, nl=False)  # bytes go to the binary stream as they are
    else:
        _write(path, data, force)
    click.echo(f"wrote {'standard output' if to_stdout else path} ({human_size(len(data))}, "
               f"{line.content_type}, a {line.kind} customer {line.customer_id} sent {when(line.received_at)})",
               err=to_stdout)


def default_filename(line: MediaLine) -> str:
    """The customer's name for it, its last component only; else `<id><.ext of its type>`."""
    name = clean_filename(Media("file", "", filename=line.filename).safe_filename)
    return name or f"{line.id}{_extension(line.content_type)}"


def _extension(content_type: str | None) -> str:
    base = (content_type or "").split(";")[0].strip().lower()
    subtype = base.rpartition("/")[2]
    return mimetypes.guess_extension(base) or (f".{subtype}" if subtype.isalnum() else ".bin")  # audio/amr: .amr


def _stored_key(line: MediaLine) -> str:
    if line.status == "failed":
        raise click.ClickException(f"media item {line.id} was not kept: {line.last_error or 'failed'}")
    if line.status != "stored" or not line.key:
        raise click.ClickException(f"media item {line.id} is not stored yet ({_state(line)}); the bot downloads it "
                                   "while it runs (scrm serve)")
    return line.key


def _read(settings: Settings, line: MediaLine, key: str) -> bytes:
    """The item's bytes from the media store, checked against the hash recorded when it was kept."""
    store = build_media_store(settings.media)

    async def read() -> bytes:
        try:
            return await store.get(key)
        finally:
            await store.close()

    try:
        data = asyncio.run(read())
    except MediaNotFound:
        raise click.ClickException(f"media item {line.id} is recorded as {key}, but {store.describe()} has no such "
                                   "item (was the media: section changed, or the item deleted?)") from None
    except MediaStoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except (MediaError, OSError) as exc:
        raise click.ClickException(f"media store {store.describe()} cannot be read: {exc}") from None
    if line.sha256 and hashlib.sha256(data).hexdigest() != line.sha256:
        raise click.ClickException(f"media item {line.id}: the bytes in {store.describe()} do not match the sha256 "
                                   "recorded when it was kept (the stored copy is damaged); nothing written")
    return data


def _write(path: Path, data: bytes, force: bool) -> None:
    try:
        with path.open("wb" if force else "xb") as handle:  # x: never over a file that appeared meanwhile
            handle.write(data)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


def _exists(path: Path) -> click.ClickException:
    return click.ClickException(f"{path} exists: add --force to overwrite it, or name another file with -o FILE")
