"""Who may talk to ``assft web``: loopback by default, a token on every request, and the command
refusing what would expose a workspace."""

from __future__ import annotations

import pytest

from assft_testing import run_cli
from assft_web.access import AccessPolicy, is_loopback, new_token

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
