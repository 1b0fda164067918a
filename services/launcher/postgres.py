"""Embedded PostgreSQL from the pgserver wheel, run as a plain foreground child.

pgserver's own API daemonises postgres with pg_ctl; we use its binaries directly so the launcher
owns the process, sees its output and stops it with the signal we choose.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # Importing pgserver computes a runtime directory we never use and warns when
    # XDG_RUNTIME_DIR is unset (as under CI): the test suite turns warnings into errors.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

SUPERUSER = "postgres"
DATABASE = "energymesh"
# postgres refuses to run as root; as root we run it as this (created if missing) user.
SYSTEM_USER = "pgserver"


def system_user() -> str | None:
    """The user to run initdb and postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def prepare_data_dir(pgdata: Path, user: str | None) -> bool:
    """Create pgdata, readable by `user`. Returns True when initdb must run."""
    if pgdata.exists() and not (pgdata / "PG_VERSION").exists():
        # An interrupted initdb: nothing worth keeping, and initdb wants an empty directory.
        shutil.rmtree(pgdata)
    needs_init = not pgdata.exists()
    pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is not None:
        # Let the unprivileged user reach the data directory and the wheel's binaries.
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(
            POSTGRES_BIN_PATH, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        )
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        entry = pwd.getpwnam(user)
        if pgdata.stat().st_uid != entry.pw_uid:
            for path in (pgdata, *pgdata.rglob("*")):
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return needs_init


def initdb_argv(pgdata: Path) -> list[str]:
    return [
        str(POSTGRES_BIN_PATH / "initdb"),
        "-D",
        str(pgdata),
        "--auth=trust",
        "-U",
        SUPERUSER,
        "--encoding=utf8",
        # The C locale exists everywhere; the host's may not.
        "--no-locale",
    ]


def postgres_argv(pgdata: Path, port: int) -> list[str]:
    return [
        str(POSTGRES_BIN_PATH / "postgres"),
        "-D",
        str(pgdata),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        # No Unix socket: TCP only, so no socket directory to own and no path-length limit.
        "-k",
        "",
    ]


def url(port: int, database: str = DATABASE) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


def ensure_database(port: int, database: str = DATABASE) -> None:
    with psycopg.connect(url(port, "postgres"), autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
