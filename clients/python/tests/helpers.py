"""The real server for the tests: dakota-server on free loopback ports, certificates made with
openssl, a proxy that cuts a connection mid-stream, and the server's own counters."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc

from dakota_client import content_pb2 as pb

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("DAKOTA_BIN_DIR", REPO / "target" / "debug"))
if not BIN_DIR.is_absolute():
    BIN_DIR = REPO / BIN_DIR
SERVER_BIN = BIN_DIR / "dakota-server"
CLI_BIN = BIN_DIR / "dakota"
STARTUP = 30.0


class Server:
    """dakota-server on port 0 (the bound addresses read from its JSON log), on the embedded
    offline defaults with the repository's knowledge base, stopped with SIGTERM."""

    def __init__(self, name: str, args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        if not SERVER_BIN.exists():
            raise RuntimeError(f"no {SERVER_BIN}: build it (cargo build) or set DAKOTA_BIN_DIR")
        self.log_path = Path(tempfile.mkstemp(prefix=f"dakota-pytest-{name}-", suffix=".log")[1])
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SERPER_", "DAKOTA_", "OTEL_", "REDIS_"))}
        clean.update(env or {})
        command = [str(SERVER_BIN), "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
                   "--log-format", "json", "--kb-dir", str(REPO / "knowledge"), *args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, env=clean, stdout=log, stderr=subprocess.STDOUT)
        self.grpc_addr, self.admin_addr = self._wait_until_serving(name)

    def _wait_until_serving(self, name: str) -> tuple[str, str]:
        deadline = time.monotonic() + STARTUP
        addrs: tuple[str, str] | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dakota-server ({name}) exited with {self.process.returncode}:\n{self.log()}")
            for line in self.log().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "grpc_addr" in record and "admin_addr" in record:
                    addrs = (record["grpc_addr"], record["admin_addr"])
                if addrs and record.get("message") == "SERVING":
                    return addrs
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dakota-server ({name}) not SERVING within {STARTUP} s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://{self.grpc_addr}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def counter(self, name: str, **labels: str) -> float:
        """A sample of the server's /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://{self.admin_addr}/metrics", timeout=10) as response:
            text = response.read().decode()
        want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        for line in text.splitlines():
            found = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
            if found and (found.group(1) or "") == want:
                return float(found.group(2))
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Pki:
    """A test CA and a server certificate for 127.0.0.1 and localhost, made with openssl as
    tests/e2e/tls.rs makes them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=dakota-client test CA", "-days", "2")
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self._openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
        self.ca = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"

    def _openssl(self, *args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=self.folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)}: {done.stderr}")


class CuttingProxy:
    """A TCP proxy to a plaintext gRPC server that cuts its first connection once the server
    has sent `after_messages` whole gRPC messages (events) on it: HTTP/2 frames are parsed, and
    the DATA frame that holds the last message to pass is shortened to end with it, and then
    the connection dies (gRPC hands out at most those events: it drops what it had not handed
    out yet). Later connections pass unchanged. `after_messages=0` cuts at the first DATA
    frame: no event arrives, although the server has the request (it answers only once the
    job exists)."""

    def __init__(self, upstream: str, after_messages: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._after = after_messages
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self.cut = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            _close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                _close(client)
                continue
            self._sockets += [client, server]
            first = self.connections == 1
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            target = self._pump_cutting if first else self._pump
            threading.Thread(target=target, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)

    def _pump_cutting(self, server: socket.socket, client: socket.socket) -> None:
        buffer = b""
        partial: dict[int, bytes] = {}  # per stream: the start of a message not yet whole
        seen = 0
        try:
            while data := server.recv(65536):
                buffer += data
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[0:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    frame, buffer = buffer[:9 + length], buffer[9 + length:]
                    kind, flags, stream_id = frame[3], frame[4], frame[5:9]
                    if kind != 0x0:  # not DATA
                        client.sendall(frame)
                        continue
                    payload = frame[9:]
                    if flags & 0x8:  # PADDED
                        payload = payload[1:len(payload) - payload[0]]
                    if self._after == 0 and payload:
                        raise _Cut
                    state, pos, cut_at = partial.get(int.from_bytes(stream_id, "big"), b""), 0, None
                    while pos < len(payload) and cut_at is None:
                        if len(state) < 5:
                            take = 5 - len(state)
                            state, pos = state + payload[pos:pos + take], pos + min(take, len(payload) - pos)
                            if len(state) < 5:
                                break
                        whole = 5 + int.from_bytes(state[1:5], "big")
                        take = whole - len(state)
                        state, pos = state + payload[pos:pos + take], pos + min(take, len(payload) - pos)
                        if len(state) == whole:
                            seen, state = seen + 1, b""
                            if seen == self._after:
                                cut_at = pos
                    partial[int.from_bytes(stream_id, "big")] = state
                    if cut_at is not None:
                        kept = payload[:cut_at]
                        client.sendall(len(kept).to_bytes(3, "big") + b"\x00\x00" + stream_id + kept)
                        raise _Cut
                    client.sendall(frame)
        except _Cut:
            self.cut.set()
        except OSError:
            pass
        _close(server)
        _close(client)


class _Cut(Exception):
    pass


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class ArticleServer:
    """A stand-in ContentService that answers GetArticle with the articles it is given, so
    that the CLI writes the folders of articles no real job would produce."""

    def __init__(self, articles: dict[str, pb.Article]) -> None:
        def get_article(request: pb.GetArticleRequest, context: grpc.ServicerContext) -> pb.Article:
            if request.job_id not in articles:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")
            return articles[request.job_id]

        handler = grpc.unary_unary_rpc_method_handler(
            get_article, request_deserializer=pb.GetArticleRequest.FromString,
            response_serializer=pb.Article.SerializeToString)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("dakota.content.v1.ContentService", {"GetArticle": handler}),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._server.stop(grace=None)
