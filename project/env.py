"""Typed readers for environment variables.

Every setting the site reads from the environment goes through one of these helpers, so a
bad value stops start-up with one line that names the variable and says what was expected.
Secret values are never echoed back in those messages.

Reading is free of side effects: values from ``.env`` and ``var/secrets.env`` (see
:func:`load_site_env_files`) are kept here as defaults under the process environment and
are never written into ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, overload
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

N = TypeVar("N", int, float)
D = TypeVar("D")  # a default: a number, or None

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

BASE_DIR = Path(__file__).resolve().parent.parent

#: Values read from env files: used for a name the process environment does not set.
_file_defaults: dict[str, str] = {}


def _layers() -> tuple[Mapping[str, str], Mapping[str, str]]:
    """Where values come from, strongest first: the process environment, then env files."""
    return os.environ, _file_defaults


def _raw(name: str) -> str | None:
    for layer in _layers():
        value = layer.get(name)
        if value is not None:
            return value.strip()
    return None


def _bad(name: str, value: str, expected: str, *, secret: bool = False) -> ImproperlyConfigured:
    shown = "<hidden>" if secret else repr(value)
    return ImproperlyConfigured(f"{name}={shown} is invalid: expected {expected}")


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of an env file (missing file: nothing)."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        if not sep or not key.isidentifier():
            raise ImproperlyConfigured(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values.setdefault(key, value)
    return values


def load_env_file(path: Path) -> None:
    """Use an env file's values as defaults: the process environment, and files loaded
    earlier, win. Nothing is written into ``os.environ``.

    Lets an operator keep settings in ``.env``, and lets any ``manage.py`` command find the
    keys ``make run`` generated into ``var/secrets.env``.
    """
    for key, value in read_env_file(path).items():
        _file_defaults.setdefault(key, value)


def var_dir(base_dir: Path = BASE_DIR) -> Path:
    """``VAR_DIR``: the data of ``make run`` (embedded database, generated keys, media)."""
    return Path(env_str("VAR_DIR", str(base_dir / "var")))


def load_site_env_files(base_dir: Path = BASE_DIR) -> None:
    """The operator's ``.env``, then the keys ``make run`` generated (``<VAR_DIR>/secrets.env``)."""
    load_env_file(base_dir / ".env")
    load_env_file(var_dir(base_dir) / "secrets.env")


@overload
def env_str(name: str, default: str, *, required: bool = False) -> str: ...
@overload
def env_str(name: str, default: None = None, *, required: bool = False) -> str | None: ...
def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    value = _raw(name)
    if value in (None, ""):
        if required:
            raise ImproperlyConfigured(f"{name} is required but not set")
        return default
    return value


def env_secret(name: str, default: str | None = None) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (the container
    convention: ``/run/secrets/...``). One trailing newline of the file is dropped.

    Setting both is an error, as is a file that cannot be read or is empty. The process
    environment is one source and the env files another: a pair set in the environment
    wins over the files, so ``SECRET_KEY_FILE`` in the environment overrides a generated
    ``SECRET_KEY`` in ``var/secrets.env``.
    """
    file_name = f"{name}_FILE"
    for layer in _layers():
        value = (layer.get(name) or "").strip()
        path = (layer.get(file_name) or "").strip()
        if value and path:
            raise ImproperlyConfigured(f"{name} and {file_name} are both set: set only one of them")
        if value:
            return value
        if path:
            return _read_secret_file(file_name, path)
    return default


def _read_secret_file(name: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise ImproperlyConfigured(f"{name}={path!r} cannot be read: {reason}") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise ImproperlyConfigured(f"{name}={path!r} is empty")
    return text


def env_secret_source(name: str) -> str | None:
    """Which variable gives the secret :func:`env_secret` reads: ``NAME``, ``NAME_FILE`` or None."""
    for layer in _layers():
        if (layer.get(name) or "").strip():
            return name
        if (layer.get(f"{name}_FILE") or "").strip():
            return f"{name}_FILE"
    return None


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _bad(name, value, "one of 1/0, true/false, yes/no, on/off")


def _number(
    name: str,
    default: D,
    cast: Callable[[str], N],
    kind: str,
    minimum: float | None,
    maximum: float | None,
) -> N | D:
    value = _raw(name)
    if value in (None, ""):
        return default
    try:
        number = cast(value)
    except ValueError:
        raise _bad(name, value, kind) from None
    if minimum is not None and number < minimum:
        raise _bad(name, value, f"{kind} >= {minimum}")
    if maximum is not None and number > maximum:
        raise _bad(name, value, f"{kind} <= {maximum}")
    return number


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    return _number(name, default, int, "an integer", minimum, maximum)


@overload
def env_float(name: str, default: float, *, minimum: float | None = None, maximum: float | None = None) -> float: ...
@overload
def env_float(
    name: str, default: None, *, minimum: float | None = None, maximum: float | None = None
) -> float | None: ...
def env_float(
    name: str, default: float | None, *, minimum: float | None = None, maximum: float | None = None
) -> float | None:
    return _number(name, default, float, "a number", minimum, maximum)


def env_list(name: str, default: Sequence[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    value = _raw(name)
    if value in (None, ""):
        return default
    if value.lower() not in choices:
        raise _bad(name, value, "one of " + ", ".join(choices))
    return value.lower()


def env_delays(name: str, default: Sequence[float]) -> tuple[float, ...]:
    """A retry policy: comma-separated non-negative seconds, for example ``4,16,64``."""
    value = _raw(name)
    if value is None:
        return tuple(default)
    if value == "":
        return ()
    try:
        delays = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise _bad(name, value, "comma-separated seconds such as 4,16,64") from None
    if any(delay < 0 for delay in delays):
        raise _bad(name, value, "non-negative seconds")
    return delays


@overload
def env_url(name: str, default: str, *, schemes: Sequence[str], secret: bool = False) -> str: ...
@overload
def env_url(name: str, default: None, *, schemes: Sequence[str], secret: bool = False) -> str | None: ...
def env_url(name: str, default: str | None, *, schemes: Sequence[str], secret: bool = False) -> str | None:
    value = _raw(name)
    if value in (None, ""):
        return default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.query):
        raise _bad(name, value, "a URL starting with " + " or ".join(f"{s}://" for s in schemes), secret=secret)
    return value.rstrip("/") if parts.scheme in ("http", "https") else value


def env_fernet_keys(name: str) -> str | None:
    """One or more comma-separated Fernet keys (the first encrypts, all decrypt), from
    ``NAME`` or the file ``NAME_FILE`` names (see :func:`env_secret`)."""
    value = env_secret(name)
    if not value:
        return None
    from cryptography.fernet import Fernet

    try:
        for key in value.split(","):
            Fernet(key.strip())
    except (ValueError, TypeError):
        raise _bad(
            env_secret_source(name) or name,
            value,
            "Fernet keys (32 url-safe base64 bytes) such as the output of "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`",
            secret=True,
        ) from None
    return value


def database_from_url(name: str, url: str) -> dict:
    """Django DATABASES entry for a PostgreSQL URL; any other engine is refused."""
    from urllib.parse import parse_qsl, unquote

    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(
            f"{name} is invalid: only PostgreSQL is supported (postgres://user@host:port/dbname)"
        )
    options = dict(parse_qsl(parts.query))
    host = options.pop("host", None) or parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name} is invalid: the port is not a number") from None
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ImproperlyConfigured(f"{name} is invalid: it names no database (…/dbname)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": dbname,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        "OPTIONS": options,
    }
