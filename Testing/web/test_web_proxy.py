"""``assft web --public-url``: the page behind a real TLS reverse proxy (Debian's nginx, a
self-signed certificate made by openssl), as README's recipe sets it up. The server side is the
policy on a real aiohttp server with a page and a websocket, as in test_web_access.py."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from assft_web.access import AccessPolicy, cookie_name

TOKEN = "a-token-long-enough-0123456789"

NGINX_CONF = """\
user root;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fastcgi;
  uwsgi_temp_path {folder}/uwsgi;
  scgi_temp_path {folder}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{public_port} ssl;
    server_name localhost;
    ssl_certificate {folder}/cert.pem;
    ssl_certificate_key {folder}/key.pem;
    location / {{
      proxy_pass http://127.0.0.1:{port};
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 1d;
    }}
  }}
}}
"""
"""README's nginx recipe (``proxy_set_header Host $http_host``: the public name, its port
included), on a free port of loopback."""


def _nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("nginx is not installed (CI installs Debian's nginx-light)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _certificate(folder: Path) -> None:
    openssl = shutil.which("openssl") or pytest.skip("openssl is not installed")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def _wait_for(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx stopped: {log.read_text() if log.exists() else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("nginx did not listen within 20 s")


def test_the_page_and_its_websocket_work_behind_a_tls_reverse_proxy(tmp_path):
    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    nginx = _nginx()
    _certificate(tmp_path)
    public_port = _free_port()
    public = f"https://localhost:{public_port}"
    policy = AccessPolicy("127.0.0.1", TOKEN, public_url=public)
    assert policy.url(8080) == f"{public}/?token={TOKEN}"
    assert policy.plain_http_warning() is None  # the proxy is on this machine

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="the page")

    async def socket_route(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close()
        return ws

    async def probe() -> dict:
        app = web.Application()
        policy.install(app)
        app.router.add_get("/", page)
        app.router.add_get("/ws", socket_route)
        answers: dict = {}
        async with TestServer(app, host="127.0.0.1") as server:
            conf = tmp_path / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(folder=tmp_path, public_port=public_port, port=server.port)
            )
            process = subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                await asyncio.to_thread(_wait_for, public_port, process, tmp_path / "error.log")
                trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
                jar = aiohttp.DummyCookieJar()
                async with aiohttp.ClientSession(cookie_jar=jar) as session:

                    async def get(path: str, **headers: str) -> tuple[int, dict, bytes]:
                        async with session.get(
                            f"{public}{path}", ssl=trust, headers=headers, allow_redirects=False
                        ) as r:
                            return r.status, dict(r.headers), await r.read()

                    async def websocket(**headers: str):
                        try:
                            async with session.ws_connect(
                                f"wss://localhost:{public_port}/ws", ssl=trust, headers=headers
                            ) as ws:
                                return 101, (await ws.receive()).data
                        except aiohttp.WSServerHandshakeError as error:
                            return error.status, None

                    cookie = f"{cookie_name(server.port)}={TOKEN}"
                    answers["first"] = await get(f"/?token={TOKEN}")
                    answers["page"] = await get("/", Cookie=cookie)
                    answers["no token"] = await get("/")
                    answers["other site"] = await get("/", Cookie=cookie, Origin="https://evil.x")
                    answers["other name"] = await get(
                        "/", Cookie=cookie, Host=f"evil.example:{public_port}"
                    )
                    answers["ws"] = await websocket(Cookie=cookie, Origin=public)
                    answers["ws other site"] = await websocket(
                        Cookie=cookie, Origin="https://evil.example"
                    )
                    answers["ws no token"] = await websocket(Origin=public)
            finally:
                process.terminate()
                process.wait(timeout=20)
        return answers

    answers = asyncio.run(probe())
    status, headers, _ = answers["first"]
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert answers["page"][0] == 200 and answers["page"][2] == b"the page"
    assert answers["page"][1]["X-Frame-Options"] == "DENY"
    for refused in ("no token", "other site", "other name"):
        assert answers[refused][0] == 403 and answers[refused][2] == b"", refused
    assert answers["ws"] == (101, "hello")
    assert answers["ws other site"] == (403, None) and answers["ws no token"] == (403, None)


def test_the_public_url_is_an_https_address_of_a_host_and_needs_a_token():
    for bad in (
        "http://assft.lab.example",
        "https://assft.lab.example/assft",
        "https://assft.lab.example/?a=1",
        "https://user@assft.lab.example",
        "assft.lab.example",
    ):
        with pytest.raises(ValueError, match="give https://NAME"):
            AccessPolicy("127.0.0.1", TOKEN, public_url=bad)
    with pytest.raises(ValueError, match="needs a token"):
        AccessPolicy("127.0.0.1", None, public_url="https://assft.lab.example")
    policy = AccessPolicy("127.0.0.1", TOKEN, public_url="https://assft.lab.example")
    # The proxy passes the public name on, with or without its default port.
    assert policy.host_allowed("assft.lab.example", ("127.0.0.1", 8080))
    assert policy.host_allowed("ASSFT.lab.example:443", ("127.0.0.1", 8080))
    assert not policy.host_allowed("assft.lab.example:8443", ("127.0.0.1", 8080))
    assert not policy.host_allowed("evil.example", ("127.0.0.1", 8080))
    assert policy.host_allowed("127.0.0.1:8080", ("127.0.0.1", 8080))  # still reachable here
    assert policy.origin_allowed("https://assft.lab.example", "assft.lab.example")
    assert not policy.origin_allowed("http://assft.lab.example", "assft.lab.example")
    assert not policy.origin_allowed("https://evil.example", "assft.lab.example")
    # On another interface the hop from the proxy is plain HTTP: said at start.
    warning = AccessPolicy("0.0.0.0", TOKEN, public_url="https://a.example").plain_http_warning()
    assert warning is not None and "reverse proxy reaches this server over plain HTTP" in warning
