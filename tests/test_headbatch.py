"""The pipelined HEAD client (store/headbatch.py) against small hand-written servers: the
answers of pipelined requests in order, a server that closes connections, one that does
not pipeline, one that stops answering."""
from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from s3fuse.store.headbatch import PipelinedHeads

Answer = Callable[[str, int], bytes | None]  # (path, request number on the connection) -> bytes


def ok(path: str, _: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Length: 123\r\nX-Amz-Meta-Path: {path}\r\n"
            "X-Amz-Meta-Path: again\r\n\r\n").encode()


class Server:
    """Reads requests off each connection and answers each with `answer` (None: stop
    answering on that connection, keep it open); `per_connection`: close after that many."""

    def __init__(self, answer: Answer = ok, per_connection: int = 0, pipelines: bool = True,
                 tls: ssl.SSLContext | None = None):
        self.answer, self.per_connection, self.pipelines = answer, per_connection, pipelines
        self.tls = tls
        self.connections = 0
        self.requests: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))  # localhost: what the cert names
        self.origin = f"http{'s' if tls else ''}://localhost:{self._sock.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except OSError:
                    conn.close()
                    continue
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf, served = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                if not self.pipelines:
                    buf = b""  # what was sent after the first request is lost
                path = head.split(b" ")[1].decode().split("?")[0]
                self.requests.append(path)
                served += 1
                reply = self.answer(path, served)
                if reply is None:
                    threading.Event().wait(30)
                    return
                conn.sendall(reply)
                if (self.per_connection and served >= self.per_connection) or not self.pipelines:
                    return

    def close(self) -> None:
        self._sock.close()
        for conn in self._open:
            conn.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(*args, **kwargs) -> Server:
        servers.append(Server(*args, **kwargs))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def client_of(server: Server, **options) -> PipelinedHeads:
    return PipelinedHeads(server.origin, connect_timeout=2, first_byte_timeout=1,
                          ca_certs=None, **options)


def heads(client: PipelinedHeads, n: int) -> tuple[dict[str, tuple[int, dict]], list[str]]:
    """HEAD k0..k{n-1}: (answers by key, keys left unanswered)."""
    got: dict[str, tuple[int, dict]] = {}

    def answered(answers: list) -> None:
        for tag, status, headers in answers:
            assert tag not in got
            got[tag] = (status, headers)
    left = client.run([(f"k{i}", f"{client.origin}/b/k{i}?X-Amz-Signature=s") for i in range(n)],
                      answered)
    return got, left


def test_pipelined_answers_come_back_to_their_requests(make_server) -> None:
    server = make_server()
    client = client_of(server, connections=3, depth=8)
    got, left = heads(client, 100)
    assert not left and len(got) == 100
    for i in range(100):
        status, headers = got[f"k{i}"]
        assert status == 200 and headers["content-length"] == "123"
        assert headers["x-amz-meta-path"] == f"/b/k{i}, again"  # a repeated header joined
    assert server.connections == 3 and client.depth == 8
    assert sorted(server.requests) == sorted(f"/b/k{i}" for i in range(100))  # each once
    got, left = heads(client, 10)  # the idle connections are used again
    assert not left and len(got) == 10 and server.connections == 3


def test_a_server_closing_connections_gets_the_waiting_requests_again(make_server) -> None:
    server = make_server(per_connection=7)
    client = client_of(server, connections=2, depth=5)
    got, left = heads(client, 50)
    assert not left and len(got) == 50 and all(s == 200 for s, _ in got.values())
    assert client.depth == 5  # a cap on requests per connection: pipelining goes on


def test_a_server_that_does_not_pipeline_is_asked_one_request_at_a_time(make_server) -> None:
    server = make_server(pipelines=False)
    client = client_of(server, connections=2, depth=8)
    got, left = heads(client, 30)
    assert not left and len(got) == 30 and client.depth == 1


def test_no_answer_in_time_leaves_the_keys_to_the_caller(make_server) -> None:
    server = make_server(answer=lambda path, n: ok(path, n) if path != "/b/k3" else None)
    client = client_of(server, connections=1, depth=10)
    got, left = heads(client, 10)
    assert set(got) == {"k0", "k1", "k2"} and left == [f"k{i}" for i in range(3, 10)]
    assert client.depth == 1  # it answered part of a window, then stopped: no pipelining


def test_error_answers_are_answers(make_server) -> None:
    server = make_server(answer=lambda path, n: b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    got, left = heads(client_of(server), 5)
    assert not left and {s for s, _ in got.values()} == {404}


def test_an_unreachable_origin_leaves_every_key(make_server) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = PipelinedHeads(f"http://127.0.0.1:{port}", connect_timeout=1, first_byte_timeout=1,
                            ca_certs=None)
    left = client.run([("a", f"http://127.0.0.1:{port}/b/a")], lambda answers: None)
    assert left == ["a"]


def test_https_with_the_ca_bundle_given_and_refused_without(make_server, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = make_server(tls=tls)
    client = PipelinedHeads(server.origin, connect_timeout=2, first_byte_timeout=1,
                            ca_certs=str(cert))
    got, left = heads(client, 40)
    assert not left and len(got) == 40 and got["k7"][1]["x-amz-meta-path"] == "/b/k7, again"
    untrusting = PipelinedHeads(server.origin, connect_timeout=2, first_byte_timeout=1,
                                ca_certs=None)
    got, left = heads(untrusting, 3)  # the system CAs do not know it: the caller asks
    assert not got and left == ["k0", "k1", "k2"]


def test_an_answer_that_arrived_alone_is_not_held_back(make_server) -> None:
    """Answers are handed over as they are read: one that arrived alone is not held back
    waiting for more (a lookup waits on it; the caller groups them for storing)."""
    def slow_after_first(path: str, served: int) -> bytes:
        if served > 1:
            threading.Event().wait(0.4)
        return ok(path, served)
    server = make_server(slow_after_first)
    client = client_of(server, connections=1, depth=8)
    groups: list[tuple[float, list[str]]] = []
    started = time.monotonic()
    left = client.run([(f"k{i}", f"{client.origin}/b/k{i}?X-Amz-Signature=s") for i in range(3)],
                      lambda answers: groups.append((time.monotonic() - started,
                                                     [tag for tag, _, _ in answers])))
    assert not left
    assert groups[0][1] == ["k0"] and groups[0][0] < 0.35  # not held for the slow ones
    assert [tag for _, tags in groups for tag in tags] == ["k0", "k1", "k2"]
