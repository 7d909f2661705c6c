"""`scrm apikeys ...`: keys for the integration API (/api/v1): create (shown once), list, revoke.

Only a key's SHA-256 is stored: a lost key cannot be shown again, make a new one and revoke
the old. A read key may call GET routes; a write key may also post orders, tags, stages and
enrolments. Orders are unique per key name and order id, so give each shop or ERP its own name.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from admin_cli.common import in_store, json_option, table, when
from admin_cli.main import cli, echo_json, settings_of
from crm_store.api_keys import SCOPES, ApiKeyError, create_key, list_keys, revoke_key


@cli.group("apikeys")
def apikeys_group() -> None:
    """API keys for /api/v1: create, list, revoke."""


@apikeys_group.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="read", show_default=True,
              help="read: GET routes only; write: also orders, tags, stages, enrolments.")
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, scope: str, as_json: bool) -> None:
    """Make a key for NAME (the shop, the ERP) and print it once: it is not stored, only its hash.

    Example: scrm apikeys create shop --scope write
    """
    try:
        made = in_store(settings_of(ctx), lambda session: create_key(session, name, scope))
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(asdict(made))
        return
    click.echo(f"API key {made.id} for {made.name} ({made.scope}); copy it now, it is not shown again:")
    click.echo(made.key)


@apikeys_group.command("list")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
@json_option
@click.pass_context
def list_command(ctx: click.Context, active: bool, as_json: bool) -> None:
    """Every key: id, name, visible prefix, scope, when made, last used, revoked.

    Example: scrm apikeys list --active
    """
    keys = in_store(settings_of(ctx), lambda session: list_keys(session, include_revoked=not active))
    if as_json:
        echo_json([asdict(key) for key in keys])
        return
    click.echo(table([[k.id, k.name, f"scrm_{k.prefix}_…", k.scope, when(k.created_at), when(k.last_used_at),
                       when(k.revoked_at)] for k in keys],
                     ["id", "name", "key", "scope", "created", "last used", "revoked"]))


@apikeys_group.command("revoke")
@click.argument("key_id", type=int)
@json_option
@click.pass_context
def revoke(ctx: click.Context, key_id: int, as_json: bool) -> None:
    """Stop a key: every running bot refuses it within 10 s (it stays listed, as revoked).

    Example: scrm apikeys revoke 3
    """
    try:
        key = in_store(settings_of(ctx), lambda session: revoke_key(session, key_id))
    except ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(asdict(key))
        return
    click.echo(f"API key {key.id} ({key.name}) revoked at {when(key.revoked_at)}")
