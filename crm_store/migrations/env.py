"""Alembic environment: runs migrations over the async engine the app uses."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from crm_store.db import create_engine
from crm_store.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    # crm_store.migrate.upgrade puts a progress callback here when asked (scrm migrate shows each revision).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      on_version_apply=context.config.attributes.get("on_version_apply", ()))
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


url = context.config.get_main_option("sqlalchemy.url")
if context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    assert url, "sqlalchemy.url is not set"
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async(url))
