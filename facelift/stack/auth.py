"""Credentials of the local stack: made on first start, kept under ``.stack/secrets/`` (folder 0700, files 0600).

- ``prefect-auth``: the Prefect server's basic-auth string (``admin:<random>``); the server gets it as
  ``PREFECT_SERVER_API_AUTH_STRING``, every client (worker, flow runs, CLI, ``facelift stack env``) as
  ``PREFECT_API_AUTH_STRING``. The UI asks for it on its login page.
- ``ray-token``: the Ray cluster's token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``).
- ``s3-access-key`` / ``s3-secret-key``: the only identity SeaweedFS's S3 gateway accepts (``s3.json``).
- ``seaweed-*``: JWT keys of SeaweedFS's filer and volume servers (``seaweed/security.toml``).

Auth is on unless ``STACK_AUTH=off`` is set, an explicit choice (documented in docs/deploy.md): then the
services run open on loopback, as before. Secret values are never printed: ``facelift stack env`` prints
``$(cat <file>)`` for them.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

AUTH_SWITCH = "STACK_AUTH"  # on (default) | off


class StackAuthError(RuntimeError):
    """``STACK_AUTH`` has a value other than on/off, or a secret file cannot be used."""


def auth_enabled(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(AUTH_SWITCH, "on").strip().lower()
    if value not in {"on", "off", "1", "0", "true", "false", ""}:
        raise StackAuthError(f"{AUTH_SWITCH}={value!r}: use on or off")
    return value in {"on", "1", "true", ""}


def ensure_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, created atomically (``O_EXCL``, mode 0600) on first use; a file readable by
    others is made private again."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        value = path.read_text().strip()
        if not value:
            raise StackAuthError(f"secret file {path} is empty: delete it and start the stack again") from None
        return value
    value = make()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


@dataclass(frozen=True)
class StackSecrets:
    """The secret files of one stack folder (``<stack>/secrets``)."""

    dir: Path

    @property
    def prefect_auth_path(self) -> Path:
        return self.dir / "prefect-auth"

    @property
    def ray_token_path(self) -> Path:
        return self.dir / "ray-token"

    @property
    def s3_key_paths(self) -> tuple[Path, Path]:
        return self.dir / "s3-access-key", self.dir / "s3-secret-key"

    def prefect_auth(self) -> str:
        return ensure_secret(self.prefect_auth_path, lambda: f"admin:{secrets.token_urlsafe(24)}")

    def ray_token(self) -> str:
        return ensure_secret(self.ray_token_path, lambda: secrets.token_hex(32))

    def s3_keys(self) -> tuple[str, str]:
        access, secret = self.s3_key_paths
        return (ensure_secret(access, lambda: f"facelift-{secrets.token_hex(8)}"),
                ensure_secret(secret, lambda: secrets.token_urlsafe(30)))

    def s3_config(self) -> Path:
        """SeaweedFS's ``-s3.config``: one identity, with the stack's keys (rewritten from the key files)."""
        access, secret = self.s3_keys()
        path = self.dir / "s3.json"
        doc = {"identities": [{"name": "facelift", "credentials": [{"accessKey": access, "secretKey": secret}],
                               "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        return path

    def postgres_password(self) -> str:
        return ensure_secret(self.dir / "postgres-password", lambda: secrets.token_urlsafe(24))

    def seaweed_security(self) -> Path:
        """A folder holding SeaweedFS's ``security.toml`` (weed reads it from its working directory): JWT keys for
        writes and reads on the filer and the volume servers, so their HTTP ports, which any local user sees in
        ``ps``, refuse anyone without a token; the S3 gateway signs its own requests with them."""
        keys = {name: ensure_secret(self.dir / f"seaweed-{name}", lambda: secrets.token_hex(32))
                for name in ("volume-write", "volume-read", "filer-write", "filer-read")}
        folder = self.dir / "seaweed"
        folder.mkdir(mode=0o700, exist_ok=True)
        text = "".join(f'[{section}]\nkey = "{keys[name]}"\nexpires_after_seconds = 60\n' for section, name in (
            ("jwt.signing", "volume-write"), ("jwt.signing.read", "volume-read"),
            ("jwt.filer_signing", "filer-write"), ("jwt.filer_signing.read", "filer-read")))
        fd = os.open(folder / "security.toml", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return folder

    def client_env(self) -> dict[str, str]:
        """What every client of the stack needs (worker, flow runs, CLI); holds secret values."""
        access, secret = self.s3_keys()
        self.ray_token()
        return {"PREFECT_API_AUTH_STRING": self.prefect_auth(), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.ray_token_path), "AWS_ACCESS_KEY_ID": access,
                "AWS_SECRET_ACCESS_KEY": secret}

    def shell_exports(self) -> list[str]:
        """``export`` lines for ``facelift stack env``: secrets are read from their files, never printed."""
        access, secret = self.s3_key_paths

        def cat(path: Path) -> str:
            return f'"$(cat {shlex.quote(str(path))})"'

        return [f"export PREFECT_API_AUTH_STRING={cat(self.prefect_auth_path)}", "export RAY_AUTH_MODE=token",
                f"export RAY_AUTH_TOKEN_PATH={shlex.quote(str(self.ray_token_path))}",
                f"export AWS_ACCESS_KEY_ID={cat(access)}", f"export AWS_SECRET_ACCESS_KEY={cat(secret)}"]


def server_security_env(ui_url: str, auth_string: str | None) -> dict[str, str]:
    """Prefect server settings: CORS limited to the UI's own origin, CSRF protection on, basic auth if given."""
    env = {"PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ui_url, "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true"}
    if auth_string:
        env.update(PREFECT_SERVER_API_AUTH_STRING=auth_string, PREFECT_API_AUTH_STRING=auth_string)
    return env
