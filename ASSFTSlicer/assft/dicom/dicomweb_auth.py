"""Credentials for a DICOMweb server and the HTTP session that carries them.

Credentials never come from the command line (where other users of the machine and the shell's
history see them): a bearer token from ``ASSFT_DICOMWEB_TOKEN``, or basic authentication from
``ASSFT_DICOMWEB_USER`` and ``ASSFT_DICOMWEB_PASSWORD``, or a JSON file given by
``--dicomweb-auth FILE`` (``{"token": "..."}`` or ``{"user": "...", "password": "..."}``).
TLS certificates are verified (``requests``' default; ``REQUESTS_CA_BUNDLE`` names a lab's own
authority), and credentials are never sent in clear text to a host other than this machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from assft.errors import BadInputError

if TYPE_CHECKING:
    import requests

__all__ = ["TIMEOUT_S", "DicomwebAuth", "check_server_url", "make_session", "read_auth"]

TIMEOUT_S = 60.0
"""Seconds to connect, and between two bytes of an answer: a server that stops answering is
named after this long instead of holding the command forever."""

TOKEN_VARIABLE = "ASSFT_DICOMWEB_TOKEN"
USER_VARIABLE = "ASSFT_DICOMWEB_USER"
PASSWORD_VARIABLE = "ASSFT_DICOMWEB_PASSWORD"


@dataclass(frozen=True)
class DicomwebAuth:
    """A bearer token, or a user and password (basic authentication); all None: none."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.token or self.user)

    def __repr__(self) -> str:  # never the secret itself, in a log or a traceback
        kind = "token" if self.token else "basic" if self.user else "none"
        return f"DicomwebAuth({kind})"


def _checked_text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
        raise BadInputError(f"{name} must be a non-empty line of text", where)
    return value


def read_auth(auth_file: str | Path | None = None) -> DicomwebAuth:
    """The credentials from ``auth_file``, else from the environment, else none.

    Raises:
        BadInputError: the file is missing, not JSON, or holds neither a token nor a user and
            password; a user without a password.
    """
    if auth_file is not None:
        path = Path(auth_file).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError("credentials file not found", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadInputError(f"is not a JSON credentials file ({error})", path) from None
        if not isinstance(data, dict) or not ({"token"} <= data.keys() or {"user"} <= data.keys()):
            raise BadInputError(
                'holds neither {"token": ...} nor {"user": ..., "password": ...}', path
            )
        if "token" in data:
            return DicomwebAuth(token=_checked_text(data["token"], "token", str(path)))
        return DicomwebAuth(
            user=_checked_text(data["user"], "user", str(path)),
            password=_checked_text(data.get("password"), "password", str(path)),
        )
    token = os.environ.get(TOKEN_VARIABLE)
    if token:
        return DicomwebAuth(token=_checked_text(token, TOKEN_VARIABLE, "environment"))
    user = os.environ.get(USER_VARIABLE)
    if user:
        password = os.environ.get(PASSWORD_VARIABLE)
        if not password:
            raise BadInputError(f"{USER_VARIABLE} is set but {PASSWORD_VARIABLE} is not")
        return DicomwebAuth(
            user=_checked_text(user, USER_VARIABLE, "environment"),
            password=_checked_text(password, PASSWORD_VARIABLE, "environment"),
        )
    return DicomwebAuth()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_url(url: str, auth: DicomwebAuth | None = None) -> str:
    """``url`` without a trailing slash, checked: http or https, a host, no credentials in it,
    and no credentials sent over plain http to another machine.

    Raises:
        BadInputError: naming the URL and the problem.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(
            f"DICOMweb server {url!r} is not an http(s) URL such as "
            "https://pacs.example.org/dicom-web"
        )
    if parts.username or parts.password:
        raise BadInputError(
            f"DICOMweb server URL {parts.hostname}: credentials in the URL are refused (the "
            f"command line is visible to other users); set {TOKEN_VARIABLE}, or {USER_VARIABLE} "
            f"and {PASSWORD_VARIABLE}, or give --dicomweb-auth FILE"
        )
    if parts.query or parts.fragment:
        raise BadInputError(
            f"DICOMweb server URL {url!r} has a query or fragment: give the service's root, "
            "and the search as --query"
        )
    if auth is not None and auth.given and parts.scheme == "http":
        if not _is_loopback(parts.hostname):
            raise BadInputError(
                f"DICOMweb server {url}: credentials would travel unencrypted over http to "
                f"{parts.hostname}; use https"
            )
    return url.strip().rstrip("/")


def make_session(auth: DicomwebAuth) -> requests.Session:
    """A ``requests`` session that sends ``auth``, verifies TLS and times out."""
    import requests
    from requests.auth import HTTPBasicAuth

    class Session(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs.setdefault("timeout", TIMEOUT_S)
            return super().request(method, url, *args, **kwargs)

    session = Session()
    session.verify = True
    if auth.token:
        session.headers["Authorization"] = f"Bearer {auth.token}"
    elif auth.user:
        session.auth = HTTPBasicAuth(auth.user, auth.password or "")
    return session
