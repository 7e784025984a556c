"""`leadscore webhooks listen`: a local receiver that verifies the service's signed webhooks and prints them."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Receive the service's webhooks on your own machine, to try a subscription.",
)

# Bodies larger than this are refused: the service's events are a few kilobytes.
MAX_BODY_BYTES = 1_000_000


def make_server(
    host: str, port: int, secret: str | None, on_event: Callable[[dict[str, Any], dict[str, str]], None]
) -> ThreadingHTTPServer:
    """An HTTP server that answers 204 to each webhook whose Standard Webhooks signature checks out, else 401.

    `on_event` gets each verified event and its headers. Without a secret nothing is verified (a first try).
    """
    from standardwebhooks import Webhook  # noqa: PLC0415 (the CLI imports this module; keep `--help` cheap)
    from standardwebhooks.webhooks import WebhookVerificationError  # noqa: PLC0415

    verifier = Webhook(secret) if secret else None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                event = verifier.verify(body, headers) if verifier else json.loads(body)
            except (WebhookVerificationError, ValueError) as err:
                self.send_response(401)
                self.end_headers()
                self.wfile.write(f"signature check failed: {err}".encode())
                return
            on_event(event, headers)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the events are the output; the access log would interleave with them

    return _Server((host, port), Handler)


class _Server(ThreadingHTTPServer):
    # The service sends a batch of deliveries at once: the standard library's listen backlog of 5 would refuse most
    # of a burst's connections, and every refused delivery waits for its retry.
    request_queue_size = 1024
    daemon_threads = True


@app.command()
def listen(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on (127.0.0.1).")] = 9000,
    secret: Annotated[
        str | None, typer.Option(envvar="LEADSCORE_WEBHOOK_SECRET", help="The subscription's whsec_... secret.")
    ] = None,
) -> None:
    """Print each webhook the service sends to http://127.0.0.1:PORT/ as one JSON line, after checking its signature."""
    lock = threading.Lock()

    def show(event: dict[str, Any], headers: dict[str, str]) -> None:
        with lock:
            sys.stdout.write(json.dumps({"webhook-id": headers.get("webhook-id"), **event}) + "\n")
            sys.stdout.flush()

    server = make_server("127.0.0.1", port, secret, show)
    checked = "verifying signatures" if secret else "NOT verifying signatures (pass --secret)"
    typer.echo(f"listening on http://127.0.0.1:{port}/, {checked}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
