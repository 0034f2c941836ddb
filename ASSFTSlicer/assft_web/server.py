"""Start the server of one workspace: the app, the token check on every request, the URL."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from assft_web.access import AccessPolicy


def serve(
    workspace: Path,
    policy: AccessPolicy,
    *,
    port: int,
    device: str,
    budget: int,
    finetune_config: dict[str, Any] | None = None,
) -> int:
    """Serve until stopped (Ctrl-C, SIGTERM); a running ranking or prediction is stopped then,
    a fine-tuning job goes on (it is detached, as from Slicer)."""
    from trame.app import get_server

    from assft_web.app import AnnotationApp

    server = get_server("assft-web", client_type="vue3")
    server.cli.parse_known_args([])  # the engine's command line is not trame's
    app = AnnotationApp(
        workspace, server, device=device, budget=budget, finetune_config=finetune_config
    )

    @server.controller.add("on_server_bind")
    def _bind(wslink_server) -> None:
        policy.install(wslink_server.app)

    @server.controller.add("on_server_ready")
    def _ready(**_kwargs) -> None:
        # Printed once the port is known (--port 0 picks a free one); flushed for scripts.
        print(f"ASSFT web: {policy.url(server.port)}", flush=True)

    try:
        server.start(port=port, host=policy.host, open_browser=False, show_connection_info=False)
    finally:
        app.shutdown()
        logging.info("assft web stopped")
    return 0
