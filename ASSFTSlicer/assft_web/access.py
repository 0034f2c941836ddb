"""Who may talk to the web server: the interface it listens on and the token its URL carries.

Plain Python (no trame), so the rules are tested on their own:

- by default the server listens on 127.0.0.1 only;
- every request carries the server's token: in the URL's query (``?token=...``) the first
  time, then in a cookie the server sets on that answer (same site only, never readable by
  scripts). A request without it gets ``403`` and an empty body, whatever it asks for (the page,
  its scripts, the websocket);
- on another interface than loopback the token cannot be turned off;
- a request that a browser sends for another site's page (its ``Origin`` is not this server:
  scheme, host and port) is refused too, token or not: with ``--no-token``, any page open in the
  user's browser could otherwise drive the annotation page through its websocket;
- a request whose ``Host`` is not a name this server was started for is refused (DNS
  rebinding: an attacker's domain that resolves to 127.0.0.1 reaches the server, but its
  requests name the attacker's domain): ``127.0.0.1``, ``localhost`` and ``[::1]``, the
  ``--host`` given, or, on every interface (``0.0.0.0``), the address the request arrived on;
  always with the port the server listens on;
- no other site may show the page in a frame (``X-Frame-Options`` and
  ``Content-Security-Policy: frame-ancestors``, on every answer);
- the cookie is named after the server's port, so that two servers on one machine keep their
  own, and the redirect that takes the token out of the address goes to a path on this server
  only;
- behind a TLS reverse proxy (``--public-url https://NAME[:PORT]``), the public name and its
  HTTPS origin are accepted as well, the token is required, and the cookie set through that
  name is ``Secure``.
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

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""The names of this machine that the server always answers to (with its port)."""

FRAME_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
"""Sent on every answer: no other site shows the page in a frame (clickjacking)."""

__all__ = [
    "FRAME_HEADERS",
    "TOKEN_COOKIE",
    "TOKEN_PARAMETER",
    "AccessPolicy",
    "cookie_name",
    "is_loopback",
    "new_token",
]


def cookie_name(port: int) -> str:
    """The token cookie of the server on ``port`` (cookies are shared across the ports of one
    host: one name per server keeps two servers from overwriting each other's)."""
    return f"{TOKEN_COOKIE}_{port}"


def _address(text: str) -> str:
    """An address or name in one spelling: lower case, no brackets, IPv4-mapped IPv6 as IPv4."""
    text = text.strip("[]").lower()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_and_port(netloc: str, scheme: str = "http") -> tuple[str, int] | None:
    """``host[:port]`` split (None when malformed)."""
    try:
        split = urlsplit(f"//{netloc}")
        port = split.port
    except ValueError:
        return None
    if not split.hostname or split.username is not None or split.password is not None:
        return None
    return _address(split.hostname), port if port is not None else _DEFAULT_PORTS.get(scheme, 80)


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
    public_url: str | None = None
    """The HTTPS address a reverse proxy serves the page at (``https://name[:port]``)."""

    def __post_init__(self) -> None:
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"--host {self.host} is not loopback: the server needs a token there "
                "(drop --no-token)"
            )
        if self.token is not None and len(self.token) < 16:
            raise ValueError("the token must have at least 16 characters")
        if self.public_url is not None:
            self.public_origin()  # refused now, not at the first request
            if self.token is None:
                raise ValueError("--public-url puts the page on a network: it needs a token")

    def public_origin(self) -> tuple[str, str, int] | None:
        """``(scheme, host, port)`` of :attr:`public_url` (None without one).

        Raises:
            ValueError: not an ``https://`` address of a host alone (a path, a query, a user
                or plain HTTP would each break the checks or send the token in clear).
        """
        if self.public_url is None:
            return None
        problem = f"--public-url {self.public_url!r}: give https://NAME or https://NAME:PORT"
        try:
            split = urlsplit(self.public_url)
        except ValueError:
            raise ValueError(problem) from None
        if split.scheme.lower() != "https" or split.path not in ("", "/"):
            raise ValueError(problem)
        if split.query or split.fragment:
            raise ValueError(problem)
        named = _host_and_port(split.netloc, "https")
        if named is None:
            raise ValueError(problem)
        return ("https", *named)

    def through_proxy(self, host: str | None) -> bool:
        """Whether a request's ``Host`` is the public name (the proxy passes it on)."""
        public = self.public_origin()
        return (
            public is not None and bool(host) and _host_and_port(host or "", "https") == public[1:]
        )

    def origin_allowed(self, origin: str | None, host: str | None, scheme: str = "http") -> bool:
        """:meth:`same_origin`; through the proxy (``host`` the public name), the public HTTPS
        origin only (the hop from the proxy is plain HTTP, what the browser saw is not)."""
        public = self.public_origin()
        if public is None or not self.through_proxy(host):
            return self.same_origin(origin, host, scheme)
        if origin is None:
            return True
        try:
            split = urlsplit(origin)
        except ValueError:
            return False
        if split.scheme.lower() != "https" or split.path not in ("", "/"):
            return False
        return _host_and_port(split.netloc, "https") == public[1:]

    def allows(self, query_token: str | None, cookie_token: str | None) -> bool:
        """Whether a request with this query parameter and cookie may be answered."""
        if self.token is None:
            return True
        return any(
            given is not None and hmac.compare_digest(given.encode(), self.token.encode())
            for given in (query_token, cookie_token)
        )

    @staticmethod
    def same_origin(origin: str | None, host: str | None, scheme: str = "http") -> bool:
        """Whether a request's ``Origin`` header (None: not sent, as by a script outside a
        browser or a same-origin page load) is this server, reached as ``host`` (the request's
        ``Host`` header) over ``scheme``: the scheme, host and port all agree."""
        if origin is None:
            return True
        if not host:
            return False
        try:
            split = urlsplit(origin)
        except ValueError:
            return False
        if split.scheme.lower() != scheme or split.path not in ("", "/"):
            return False
        theirs = _host_and_port(split.netloc, split.scheme.lower())
        return theirs is not None and theirs == _host_and_port(host, scheme)

    def host_allowed(self, host: str | None, local: tuple[str, int]) -> bool:
        """Whether a request's ``Host`` header names this server (DNS rebinding).

        Args:
            host: the ``Host`` header.
            local: the address and port the request's connection arrived on.
        """
        if not host:
            return False
        if self.through_proxy(host):
            return True
        named = _host_and_port(host)
        if named is None:
            return False
        name, port = named
        if port != local[1]:
            return False
        allowed = set(LOOPBACK_NAMES)
        if self.host in ("", "0.0.0.0", "::"):
            allowed.add(_address(local[0]))  # every interface: the address it arrived on
        else:
            allowed.add(_address(self.host))
        return name in allowed

    def plain_http_warning(self) -> str | None:
        """What to say when the token will cross the network in clear (a token on an interface
        other than loopback: the page is plain HTTP); None otherwise."""
        if self.token is None or is_loopback(self.host):
            return None
        if self.public_url is not None:
            return (
                f"assft web: warning: --host {self.host or '0.0.0.0'}: the reverse proxy reaches "
                "this server over plain HTTP, so the token crosses the network between them in "
                "clear; run the proxy on this machine and keep the default --host 127.0.0.1"
            )
        return (
            f"assft web: warning: --host {self.host or '0.0.0.0'} serves the page over plain "
            "HTTP, so the token crosses the network in clear; keep the default --host 127.0.0.1 "
            "and reach it through an SSH tunnel (ssh -N -L PORT:127.0.0.1:PORT THIS-MACHINE, the "
            "same port on both ends, then open the printed URL)"
        )

    def url(self, port: int) -> str:
        """The URL to open: the host as given (brackets for IPv6), the token in the query;
        behind a proxy, the public address."""
        if self.public_url is not None:
            return f"{self.public_url.rstrip('/')}/?{TOKEN_PARAMETER}={self.token}"
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = f"[{host}]" if ":" in host else host
        query = f"?{TOKEN_PARAMETER}={self.token}" if self.token else ""
        return f"http://{host}:{port}/{query}"

    def middleware(self):
        """An aiohttp middleware: a request for another host or from another site's page, or
        without the token, gets 403 and an empty body; one with the token in its query (the
        printed URL) is redirected to the same path on this server without it, with the cookie
        set, so that the token leaves the address bar and the page's own requests (scripts, the
        websocket) carry the cookie."""
        from aiohttp import web
        from yarl import URL

        policy = self

        @web.middleware
        async def require_token(request, handler):
            local = request.transport.get_extra_info("sockname") if request.transport else None
            if not local or not policy.host_allowed(request.host, (str(local[0]), local[1])):
                return web.Response(status=403, body=b"")
            if not policy.origin_allowed(
                request.headers.get("Origin"), request.host, request.scheme
            ):
                return web.Response(status=403, body=b"")
            cookie = cookie_name(local[1])
            query = request.query.get(TOKEN_PARAMETER)
            if not policy.allows(query, request.cookies.get(cookie)):
                return web.Response(status=403, body=b"")
            if policy.token is not None and query is not None:
                rest = {k: v for k, v in request.query.items() if k != TOKEN_PARAMETER}
                # A path on this server: "//evil.example/x" (or "/\\evil...") would otherwise
                # read as another host to a browser.
                path = "/" + request.path.lstrip("/\\")
                target = URL.build(path=path, query=rest)
                response = web.Response(status=303, headers={"Location": str(target)})
                response.set_cookie(
                    cookie,
                    policy.token,
                    httponly=True,
                    samesite="Strict",
                    secure=policy.through_proxy(request.host),  # the browser saw HTTPS
                )
                return response
            return await handler(request)

        return require_token

    def install(self, app) -> None:
        """Put the checks and the frame headers on an aiohttp application (before it starts),
        and answer the page's launcher request (:func:`_session_url`)."""
        app.middlewares.append(self.middleware())
        app.on_response_prepare.append(_frame_headers)
        app.router.add_post(LAUNCHER_PATH, _session_url)


LAUNCHER_PATH = "/paraview/"
"""Where trame's page first asks a launcher for its websocket (``sessionManagerURL``)."""


async def _session_url(request):
    """The launcher's answer: the websocket of this server, on the host and with the scheme the
    browser used (trame's page puts them in for ``USE_HOST``). Without it the page's request was
    refused (405, an error in the browser's console) before it fell back to the same address."""
    from aiohttp import web

    return web.json_response({"sessionURL": "ws://USE_HOST/ws"})


async def _frame_headers(request, response) -> None:
    """Every answer, the websocket's and a refusal's included, forbids framing by other sites."""
    response.headers["X-Frame-Options"] = FRAME_HEADERS["X-Frame-Options"]
    policy = response.headers.get("Content-Security-Policy")
    if not policy:
        response.headers["Content-Security-Policy"] = FRAME_HEADERS["Content-Security-Policy"]
    elif "frame-ancestors" not in policy:
        response.headers["Content-Security-Policy"] = f"{policy}; frame-ancestors 'none'"
