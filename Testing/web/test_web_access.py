"""Who may talk to ``assft web``: loopback by default, a token on every request, and the command
refusing what would expose a workspace."""

from __future__ import annotations

import pytest

from assft_testing import run_cli, run_cli_in_process
from assft_web.access import TOKEN_COOKIE, AccessPolicy, cookie_name, is_loopback, new_token

TOKEN = "a-token-long-enough-0123456789"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.1.2.3", False),
        ("192.168.0.7", False),
    ],
)
def test_loopback_is_told_from_other_interfaces(host, loopback):
    assert is_loopback(host) is loopback


def test_without_a_token_only_loopback_is_served():
    assert AccessPolicy("127.0.0.1", None).allows(None, None)
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ValueError, match="needs a token"):
            AccessPolicy(host, None)


def test_a_request_needs_the_token_in_its_query_or_its_cookie():
    policy = AccessPolicy("0.0.0.0", TOKEN)
    assert policy.allows(TOKEN, None) and policy.allows(None, TOKEN)
    assert not policy.allows(None, None)
    assert not policy.allows(TOKEN[:-1], None) and not policy.allows(None, TOKEN + "x")
    assert not policy.allows("", "")


def test_tokens_are_fresh_and_long_and_short_ones_are_refused():
    assert new_token() != new_token() and len(new_token()) >= 32
    with pytest.raises(ValueError, match="16 characters"):
        AccessPolicy("127.0.0.1", "short")


def test_the_printed_url_carries_the_token():
    assert AccessPolicy("127.0.0.1", TOKEN).url(8080) == f"http://127.0.0.1:8080/?token={TOKEN}"
    assert AccessPolicy("::1", TOKEN).url(9) == f"http://[::1]:9/?token={TOKEN}"
    assert AccessPolicy("127.0.0.1", None).url(8080) == "http://127.0.0.1:8080/"


def test_the_command_refuses_an_open_interface_without_a_token_and_a_folder_that_is_no_workspace(
    tmp_path,
):
    refused = run_cli("web", str(tmp_path), "--host", "0.0.0.0", "--no-token")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "assft: error: --host 0.0.0.0 is not loopback: the server needs a token there "
        "(drop --no-token)"
    ]
    missing = run_cli("web", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "not a workspace (no assft.json)" in missing.stderr and "nowhere" in missing.stderr


def test_a_bad_recipe_file_is_refused_before_the_server_starts(tmp_path, synthetic_pool):
    from assft.workspace import Workspace

    _, cases = synthetic_pool
    workspace = Workspace.create(tmp_path / "ws", [cases[0].image])
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"iterationz": 5}')
    refused = run_cli("web", str(workspace.root), "--finetune-config", str(recipe))
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert str(recipe) in line and "iterationz" in line


def test_a_request_from_another_sites_page_is_refused_even_without_a_token():
    """A real aiohttp server with the policy's middleware, on loopback, with --no-token: a
    browser request whose Origin is another site gets 403 and nothing else; the server's own
    page (same Origin) and a client that sends no Origin are served."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    assert AccessPolicy.same_origin(None, "127.0.0.1:8080")
    assert AccessPolicy.same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not AccessPolicy.same_origin("http://evil.example", "127.0.0.1:8080")
    assert not AccessPolicy.same_origin("null", "127.0.0.1:8080")
    assert not AccessPolicy.same_origin("http://127.0.0.1:9999", "127.0.0.1:8080")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="the page")

    async def probe() -> list[tuple[int, bytes]]:
        app = web.Application(middlewares=[AccessPolicy("127.0.0.1", None).middleware()])
        app.router.add_get("/", page)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            own = f"http://{client.host}:{client.port}"
            answers = []
            for headers in ({"Origin": "http://evil.example"}, {"Origin": own}, {}):
                response = await client.get("/", headers=headers)
                answers.append((response.status, await response.read()))
            return answers

    assert asyncio.run(probe()) == [(403, b""), (200, b"the page"), (200, b"the page")]


def _serve_and_probe(policy: AccessPolicy, requests) -> list:
    """A real aiohttp server on loopback with the policy installed (page, websocket); each
    request is ``(path, headers, host)`` (``"POST /path"`` posts): the Host header is ``host``
    with the server's port. Returns ``(status, headers, body)`` per request, ``("ws", status)``
    for a websocket handshake."""
    import asyncio

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="the page")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        await ws.close()
        return ws

    async def probe() -> list:
        app = web.Application()
        policy.install(app)
        app.router.add_get("/", page)
        app.router.add_get("/x", page)
        app.router.add_get("/ws", socket)
        answers: list = []
        async with TestServer(app, host="127.0.0.1") as server:
            port = server.port
            jar = aiohttp.DummyCookieJar()
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                for path, headers, host in requests:
                    headers = {
                        "Host": host.format(port=port),
                        **{k: v.format(port=port) for k, v in headers.items()},
                    }
                    url = f"http://127.0.0.1:{port}{path}"
                    if path.startswith("/ws"):
                        try:
                            async with session.ws_connect(url, headers=headers) as ws:
                                answers.append(("ws", 101, (await ws.receive()).data))
                        except aiohttp.WSServerHandshakeError as error:
                            answers.append(("ws", error.status, None))
                        continue
                    method = "POST" if path.startswith("POST ") else "GET"
                    url = url.replace("POST ", "")
                    async with session.request(
                        method, url, headers=headers, allow_redirects=False
                    ) as r:
                        answers.append((r.status, dict(r.headers), await r.read(), port))
        return answers

    return asyncio.run(probe())


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_page_reached_through_another_host_name_is_refused_dns_rebinding(token):
    """An attacker's domain that resolves to 127.0.0.1 reaches the server, but its requests
    (the page and the websocket) name that domain in Host: refused, token or not."""
    query = f"?token={TOKEN}" if token else ""
    cookie = {}
    requests = [
        (f"/{query}", cookie, "evil.example:{port}"),
        (f"/ws{query}", cookie, "evil.example:{port}"),
        (f"/{query}", cookie, "127.0.0.1:1"),  # the right name, another port
        (f"/{query}", cookie, "127.0.0.1:{port}"),
        (f"/{query}", cookie, "localhost:{port}"),
        (f"/ws{query}", cookie, "localhost:{port}"),
    ]
    answers = _serve_and_probe(AccessPolicy("127.0.0.1", token), requests)
    assert answers[0][0] == 403 and answers[0][2] == b""
    assert answers[1] == ("ws", 403, None)
    assert answers[2][0] == 403
    served = 303 if token else 200  # with a token in the query: the redirect that sets the cookie
    assert answers[3][0] == served and answers[4][0] == served
    if token is None:
        assert answers[5] == ("ws", 101, "hello")


def test_every_answer_forbids_framing_by_another_site():
    requests = [("/", {}, "127.0.0.1:{port}"), ("/", {}, "evil.example:{port}")]
    page, refused = _serve_and_probe(AccessPolicy("127.0.0.1", None), requests)
    token_redirect, no_token = _serve_and_probe(
        AccessPolicy("127.0.0.1", TOKEN),
        [(f"/?token={TOKEN}", {}, "127.0.0.1:{port}"), ("/", {}, "127.0.0.1:{port}")],
    )
    assert [a[0] for a in (page, refused, token_redirect, no_token)] == [200, 403, 303, 403]
    for answer in (page, refused, token_redirect, no_token):
        assert answer[1]["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer[1]["Content-Security-Policy"]


def test_the_token_redirect_stays_on_this_server_and_sets_a_cookie_named_for_its_port():
    requests = [
        (f"//evil.example/x?token={TOKEN}&a=1", {}, "127.0.0.1:{port}"),
        (f"/\\evil.example/x?token={TOKEN}", {}, "127.0.0.1:{port}"),
        (f"/x?token={TOKEN}", {}, "127.0.0.1:{port}"),
    ]
    answers = _serve_and_probe(AccessPolicy("127.0.0.1", TOKEN), requests)
    locations = [answer[1]["Location"] for answer in answers]
    assert locations[0] == "/evil.example/x?a=1"
    assert locations[1].startswith("/evil.example")
    assert locations[2] == "/x"
    for location in locations:
        assert not location.startswith("//") and not location.startswith("/\\")
    port = answers[2][3]
    cookie = answers[2][1]["Set-Cookie"]
    assert cookie.startswith(f"{cookie_name(port)}={TOKEN}")
    assert cookie_name(port) != cookie_name(port + 1)
    # The cookie of this server authenticates; the same token under another port's name (or
    # the old shared name) does not.
    right, other_port, shared = _serve_and_probe(
        AccessPolicy("127.0.0.1", TOKEN),
        [
            ("/", {"Cookie": f"{TOKEN_COOKIE}_{{port}}={TOKEN}"}, "127.0.0.1:{port}"),
            ("/", {"Cookie": f"{TOKEN_COOKIE}_1={TOKEN}"}, "127.0.0.1:{port}"),
            ("/", {"Cookie": f"{TOKEN_COOKIE}={TOKEN}"}, "127.0.0.1:{port}"),
        ],
    )
    assert (right[0], other_port[0], shared[0]) == (200, 403, 403)


def test_the_origin_check_compares_scheme_host_and_port():
    assert AccessPolicy.same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert AccessPolicy.same_origin("http://LOCALHOST:8080", "localhost:8080")
    assert not AccessPolicy.same_origin("https://127.0.0.1:8080", "127.0.0.1:8080")
    assert not AccessPolicy.same_origin("ws://127.0.0.1:8080", "127.0.0.1:8080")
    assert not AccessPolicy.same_origin("http://127.0.0.1", "127.0.0.1:8080")
    assert AccessPolicy.same_origin("http://127.0.0.1", "127.0.0.1")
    assert not AccessPolicy.same_origin("http://user@127.0.0.1:8080", "127.0.0.1:8080")
    assert not AccessPolicy.same_origin("http://[::1]:8080", "127.0.0.1:8080")
    assert AccessPolicy.same_origin("http://[::1]:8080", "[::1]:8080")


def test_the_host_check_knows_the_names_of_the_interface_it_listens_on():
    loopback = AccessPolicy("127.0.0.1", None)
    for name in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST:8080"):
        assert loopback.host_allowed(name, ("127.0.0.1", 8080)), name
    for name in ("evil.example:8080", "127.0.0.1:8081", "127.0.0.1", "", "a@127.0.0.1:8080"):
        assert not loopback.host_allowed(name, ("127.0.0.1", 8080)), name
    everywhere = AccessPolicy("0.0.0.0", TOKEN)
    assert everywhere.host_allowed("192.168.0.7:8080", ("192.168.0.7", 8080))
    assert everywhere.host_allowed("192.168.0.7:8080", ("::ffff:192.168.0.7", 8080))
    assert not everywhere.host_allowed("lab-pc.evil.example:8080", ("192.168.0.7", 8080))
    given = AccessPolicy("10.1.2.3", TOKEN)
    assert given.host_allowed("10.1.2.3:8080", ("10.1.2.3", 8080))
    assert not given.host_allowed("10.9.9.9:8080", ("10.1.2.3", 8080))


def test_a_token_on_an_open_interface_warns_that_it_crosses_the_network_in_clear(tmp_path):
    assert AccessPolicy("127.0.0.1", TOKEN).plain_http_warning() is None
    assert AccessPolicy("127.0.0.1", None).plain_http_warning() is None
    result = run_cli("web", str(tmp_path / "nowhere"), "--host", "0.0.0.0")
    warning, error = result.stderr.strip().splitlines()
    assert "plain HTTP" in warning and "token crosses the network in clear" in warning
    assert "ssh -N -L" in warning
    assert result.returncode == 2 and "not a workspace" in error


def test_a_port_in_use_is_said_in_one_line(tmp_path, synthetic_pool):
    """Found by the attack rerun: a second server on a taken port was an internal error."""
    import socket

    from assft.workspace import Workspace
    from assft_testing.browser import require_web

    require_web(browser=False)
    _, cases = synthetic_pool
    ws = Workspace.create(tmp_path / "ws", [cases[0].image], label_names={1: "a", 2: "b"}).root
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("web", str(ws), "--port", str(port), "--device", "cpu", "--token", TOKEN)
    errors = [line for line in result.stderr.splitlines() if line.startswith("assft:")]
    assert result.returncode == 2, result.stderr
    assert errors == [
        f"assft: error: --port {port}: the port is in use on 127.0.0.1 (another server?); "
        "choose another port, or --port 0 for any free one"
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_is_said_in_one_line(tmp_path, port):
    """Found by the attack of 2026-12-07: an internal error (OverflowError) after the app loaded."""
    from assft_testing.browser import require_web

    require_web(browser=False)
    result = run_cli_in_process("web", str(tmp_path), "--port", port, "--token", TOKEN)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"assft: error: --port must be from 0 (any free port) to 65535, got {port}"
    ]


def test_the_pages_launcher_request_is_answered_with_this_servers_websocket():
    """trame's page first asks a launcher (POST /paraview/) for its websocket: refused, it put a
    405 in the browser's console. It is answered, behind the same checks as every request."""
    import json

    with_cookie = {"Cookie": f"{TOKEN_COOKIE}_{{port}}={TOKEN}"}
    answered, refused, elsewhere = _serve_and_probe(
        AccessPolicy("127.0.0.1", TOKEN),
        [
            ("POST /paraview/", with_cookie, "127.0.0.1:{port}"),
            ("POST /paraview/", {}, "127.0.0.1:{port}"),
            ("POST /paraview/", with_cookie, "evil.example:{port}"),
        ],
    )
    assert answered[0] == 200
    assert json.loads(answered[2]) == {"sessionURL": "ws://USE_HOST/ws"}
    assert refused[0] == 403 and elsewhere[0] == 403
