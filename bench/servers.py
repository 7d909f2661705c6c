"""Throwaway PostgreSQL and Redis servers of our own, for tests and benchmarks that restart or kill them.

The machine's shared servers (127.0.0.1:5432 and :6379) are never touched: each server here
runs on a free port from a temporary directory (`initdb` + `pg_ctl` of the installed PostgreSQL,
`redis-server --port N`) and is removed when closed. PostgreSQL refuses to run as root, so
when this process is root its cluster is made and run as the `postgres` user.

    async with ThrowawayPostgres() as pg, ThrowawayRedis() as redis:
        settings = {"store": {"url": pg.url}, "redis": {"url": redis.url}}
        await pg.restart()          # a planned restart (fast shutdown)
        await redis.stop(); ...; await redis.start()
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

import asyncpg
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str:
    """`initdb`/`pg_ctl` from PATH, else from the installed PostgreSQL's bin directory."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise FileNotFoundError(f"{name} not found: install PostgreSQL's server package")


async def _run(*argv: str, user: str | None = None) -> None:
    if user is not None and os.geteuid() == 0:
        argv = ("runuser", "-u", user, "--", *argv)
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}: {output.decode(errors='replace')}")


class _Throwaway:
    async def __aenter__(self) -> _Throwaway:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class ThrowawayPostgres(_Throwaway):
    """A PostgreSQL cluster of its own with one database, `scrm`, migrated by whoever uses it."""

    def __init__(self, database: str = "scrm") -> None:
        self.port = free_port()
        self.database = database
        self.directory = Path(tempfile.mkdtemp(prefix="scrm-pg-"))
        self.data = self.directory / "data"
        self._made = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    async def start(self) -> None:
        if not self._made:
            if os.geteuid() == 0:
                owner = pwd.getpwnam(PG_USER)
                os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            await _run(_pg_bin("initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust", "--no-sync",
                       "-E", "UTF8", "--locale=C", user=PG_USER)
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                           "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        await _run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "60",
                   "start", user=PG_USER)
        if not self._made:
            admin = await asyncpg.connect(f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres")
            try:
                await admin.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await admin.close()
            self._made = True

    async def stop(self, mode: str = "fast") -> None:
        """`fast`: a planned restart (sessions are ended); `immediate`: as if the server crashed."""
        await _run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", user=PG_USER)

    async def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        await self.stop(mode)
        await asyncio.sleep(down_s)
        await self.start()

    async def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                await self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


class ThrowawayRedis(_Throwaway):
    """A `redis-server` of its own, without persistence: a restart loses every key, as a real one may."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="scrm-redis-"))
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        client = redis_asyncio.Redis.from_url(self.url)
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (OSError, RedisConnectionError):
                    if time.monotonic() > deadline or self.process.returncode is not None:
                        raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self, kill: bool = False) -> None:
        """Shut it down (SIGTERM), or with `kill` SIGKILL it; either way its keys are gone."""
        if self.process is None or self.process.returncode is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        await self.process.wait()

    async def restart(self, down_s: float = 0.0) -> None:
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    async def close(self) -> None:
        await self.stop(kill=True)
        shutil.rmtree(self.directory, ignore_errors=True)
