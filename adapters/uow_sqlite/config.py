"""Reading ``sqlite://`` URLs and options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from uow.errors import ConfigurationError

MEMORY = ":memory:"


@dataclass(frozen=True, slots=True)
class SQLiteConfig:
    """Where the database is and how connections to it behave.

    ``pool_size`` connections at most (always 1 for ``:memory:``, where every
    connection would be a separate database); ``timeout`` seconds to wait for a
    free connection; ``busy_timeout`` milliseconds SQLite waits on a lock held
    by another connection before failing.
    """

    path: str
    pool_size: int = 5
    timeout: float = 30.0
    busy_timeout: int = 5000

    @property
    def in_memory(self) -> bool:
        """Whether the database lives in memory (one shared connection)."""
        return self.path == MEMORY


_OPTIONS = {"pool_size": int, "timeout": float, "busy_timeout": int}


def parse_url(url: str, **options: Any) -> SQLiteConfig:
    """The configuration for ``url`` with keyword ``options`` over its query.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
    ``sqlite://:memory:`` and ``sqlite:///:memory:`` are understood; the query
    may hold ``pool_size``, ``timeout`` and ``busy_timeout``.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    if parts.netloc == MEMORY or (not parts.netloc and parts.path in ("", "/", "/" + MEMORY)):
        path = MEMORY
    elif parts.netloc:
        raise ConfigurationError(
            f"sqlite URLs take no host: use sqlite:///relative.db or sqlite:////absolute.db, not {url!r}"
        )
    else:
        path = unquote(parts.path[1:])
    values: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
    values.update(options)
    unknown = sorted(set(values) - set(_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown sqlite option(s): {', '.join(unknown)}; known options: {', '.join(sorted(_OPTIONS))}"
        )
    try:
        converted = {name: _OPTIONS[name](value) for name, value in values.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"bad sqlite option value: {exc}") from exc
    if path == MEMORY:
        converted["pool_size"] = 1
    config = SQLiteConfig(path=path, **converted)
    if config.pool_size < 1 or config.timeout < 0 or config.busy_timeout < 0:
        raise ConfigurationError("pool_size must be at least 1; timeout and busy_timeout not negative")
    return config


__all__ = ["MEMORY", "SQLiteConfig", "parse_url"]
