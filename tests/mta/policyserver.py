"""A local HTTPS server for MTA-STS tests: serves one body (or status) at
/.well-known/mta-sts.txt on 127.0.0.1 with a trustme certificate, from its
own thread.  Counts the requests it answered."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass
class Answer:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/plain"
    location: str | None = None


class PolicyServer:
    def __init__(self, ca: trustme.CA, names: list[str]) -> None:
        self.answer = Answer()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(f"{self.headers.get('Host')} {self.path}")
                a = server.answer
                if self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(a.status)
                self.send_header("Content-Type", a.content_type)
                self.send_header("Content-Length", str(len(a.body)))
                if a.location:
                    self.send_header("Location", a.location)
                self.end_headers()
                self.wfile.write(a.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(ctx)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def serve(self, body: bytes | str, **kw: object) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.answer = Answer(data, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# fixtures for the MTA-STS tests (test_mtasts.py, test_mtasts_relay.py)

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[PolicyServer]:
    s = PolicyServer(ca, ["mta-sts.dest.test"])
    yield s
    s.close()
