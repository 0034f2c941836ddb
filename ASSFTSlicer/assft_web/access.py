"""Who may talk to the web server: the interface it listens on and the token its URL carries.

Plain Python (no trame), so the rules are tested on their own:

- by default the server listens on 127.0.0.1 only;
- every request carries the server's token: in the URL's query (``?token=...``) the first
  time, then in a cookie the server sets on that answer (same site only, never readable by
  scripts). A request without it gets ``403`` and an empty body, whatever it asks for (the page,
  its scripts, the websocket);
- on another interface than loopback the token cannot be turned off;
- a request that a browser sends for another site's page (its ``Origin`` is not this server) is
  refused too, token or not: with ``--no-token``, any page open in the user's browser could
  otherwise drive the annotation page through its websocket.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

TOKEN_PARAMETER = "token"
TOKEN_COOKIE = "assft_web_token"

__all__ = ["TOKEN_COOKIE", "TOKEN_PARAMETER", "AccessPolicy", "is_loopback", "new_token"]


def new_token() -> str:
    """A fresh random token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves to loopback addresses only."""
    if host in ("", "0.0.0.0", "::"):
        return False  # every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


@dataclass(frozen=True)
class AccessPolicy:
    """The token every request must carry (None: none needed, allowed on loopback only).

    Raises:
        ValueError: no token on an interface other than loopback, or a token too short to be
            a secret.
    """

    host: str
    token: str | None

    def __post_init__(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"--host {self.host} is not loopback: the server needs a token there "
                "(drop --no-token)"
            )
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the token must have at least 16 characters")

    def allows(self, query_token: str | None, cookie_token: str | None) -> bool:
        """Whether a request with this query parameter and cookie may be answered."""
        if self.token is None:
            return True
        return any(
            given is not None and hmac.compare_digest(given.encode(), self.token.encode())
            for given in (query_token, cookie_token)
        )

    @staticmethod
    def same_origin(origin: str | None, host: str | None) -> bool:
        """Whether a request's ``Origin`` header (None: not sent, as by a script outside a
        browser or a same-origin page load) is this server, reached as ``host`` (the request's
        ``Host`` header)."""
        if origin is None:
            return True
        return bool(host) and urlsplit(origin).netloc.lower() == str(host).lower()

    def url(self, port: int) -> str:
        """The URL to open: the host as given (brackets for IPv6), the token in the query."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        query = f"?{TOKEN_PARAMETER}={self.token}" if self.token else ""
        return f"http://{host}:{port}/{query}"

    def middleware(self):
        """An aiohttp middleware: a request without the token gets 403 and an empty body; one
        with the token in its query (the printed URL) is redirected to the same address without
        it, with the cookie set, so that the token leaves the address bar and the page's own
        requests (scripts, the websocket) carry the cookie."""
        from aiohttp import web

        policy = self

        @web.middleware
        async def require_token(request, handler):
            query = request.query.get(TOKEN_PARAMETER)
            cookie = request.cookies.get(TOKEN_COOKIE)
            if not policy.same_origin(request.headers.get("Origin"), request.host):
                return web.Response(status=403, body=b"")
            if not policy.allows(query, cookie):
                return web.Response(status=403, body=b"")
            if policy.token is not None and query is not None:
                rest = {k: v for k, v in request.query.items() if k != TOKEN_PARAMETER}
                target = request.rel_url.with_query(rest)
                response = web.Response(status=303, headers={"Location": str(target)})
                response.set_cookie(TOKEN_COOKIE, policy.token, httponly=True, samesite="Strict")
                return response
            return await handler(request)

        return require_token
