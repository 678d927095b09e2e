"""A throwaway Ceph radosgw: a real S3 server that pushes bucket notifications to HTTP webhooks.

The OBS trigger tests need a server that *pushes* S3 event notifications. Nothing installable here
ships MinIO; Debian's Ceph does (``radosgw``, Pacific 16.2). This starts a single-node cluster —
one monitor, one memstore OSD, no manager, no auth, loopback only — and a radosgw on it with the
S3 user ``testkey``/``testsecret``, in about 16-20 s. Its data lives in memory and dies with it.

Install once (root): ``python -m tests.support.rgw --install`` runs
``apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common``.

``scripts/test`` may start one for the whole run (``python -m tests.support.rgw PORT`` prints the
endpoint once it serves, then waits; SIGTERM stops it) and export ``TRIGGERBUS_TEST_RGW``; without
that variable the test session starts its own.

Notifications are wired as RGW does it: a *topic* with a ``push-endpoint`` (our webhook URL) created
through RGW's SNS-compatible API, then a bucket notification configuration naming the topic.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import free_port

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph")
INSTALL_COMMAND = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
ACCESS_KEY = "testkey"
SECRET_KEY = "testsecret"
REGION = "default"  # RGW's zonegroup; the SNS-compatible API wants it as the region


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None and not Path(f"/usr/bin/{name}").exists()]


def install() -> None:
    """Install the Ceph packages from Debian (needs root and apt)."""
    if not missing_binaries():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env)


CONF = """[global]
fsid = {fsid}
mon initial members = a
mon host = v1:127.0.0.1:{mon_port}
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
run dir = {dir}/run
log file = {dir}/log/$name.log
admin socket = {dir}/run/$name.asok
keyring = {dir}/keyring
ms bind ipv6 = false
osd objectstore = memstore
memstore device bytes = 1073741824
osd data = {dir}/$name
mon data = {dir}/$name
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {dir}/rgw
"""


@dataclass
class RGW:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    workdir: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop our daemons (rgw, then osd, then mon), by process, and remove the cluster."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- what tests do with it -------------------------------------------------------------------

    def sns(self) -> Any:
        import boto3

        return boto3.client(
            "sns",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def minio(self) -> Any:
        from minio import Minio

        return Minio(
            self.endpoint.removeprefix("http://"),
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
        )

    def create_webhook_topic(self, name: str, url: str, *, persistent: bool = True) -> str:
        """A topic that POSTs each event to ``url``; returns its ARN. A persistent topic queues events
        inside RGW and retries until the webhook answers 2xx."""
        attributes = {"push-endpoint": url, "persistent": "true" if persistent else "false"}
        return str(self.sns().create_topic(Name=name, Attributes=attributes)["TopicArn"])

    def notify(self, bucket: str, topic_arn: str, events: list[str], *, config_id: str, prefix: str = "") -> None:
        """Send ``bucket``'s ``events`` to the topic (replaces the bucket's notification configuration)."""
        from minio.notificationconfig import NotificationConfig, PrefixFilterRule, TopicConfig

        rule = PrefixFilterRule(prefix) if prefix else None
        config = TopicConfig(events=events, config_id=config_id, prefix_filter_rule=rule, topic=topic_arn)
        self.minio().set_bucket_notification(bucket, NotificationConfig(topic_config_list=[config]))


def _run(args: list[str], conf: Path, log: Path, timeout: float = 60) -> None:
    with open(log, "ab") as out:
        subprocess.run([*args, "-c", str(conf)], check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)


def _daemon(args: list[str], conf: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([*args, "-c", str(conf), "-f"], stdout=out, stderr=subprocess.STDOUT)


class CephStartError(RuntimeError):
    """A daemon of the throwaway cluster died or did not come up; the message carries its log's tail."""


def _log_tails(workdir: Path, lines: int = 15) -> str:
    tails = []
    for log in sorted((workdir / "log").glob("*")):
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
        if text:
            tails.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(tails)


def _wait(check: Any, what: str, timeout: float, workdir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise CephStartError(
                    f"a Ceph daemon exited ({proc.args!r}, rc {proc.returncode}):\n{_log_tails(workdir)}"
                )
        if check():
            return
        time.sleep(0.3)
    raise CephStartError(f"{what} after {timeout} s:\n{_log_tails(workdir)}")


def start(port: int | None = None, mon_port: int | None = None, attempts: int = 2) -> RGW:
    """Start a cluster, once more on fresh ports if a daemon died while starting.

    A memstore OSD has been seen to exit at its first start on a machine where the packages had
    just been installed and never since; one retry keeps that from failing a whole test module,
    and the first failure is still printed with its logs.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(port if attempt == 1 else None, mon_port if attempt == 1 else None)
        except CephStartError as error:
            if attempt == attempts:
                raise
            print(f"radosgw start attempt {attempt} failed, retrying: {error}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _start_once(port: int | None, mon_port: int | None) -> RGW:
    """Start mon, osd and radosgw on loopback ports; returns once the S3 user exists."""
    missing = missing_binaries()
    if missing:
        raise RuntimeError(f"Ceph radosgw is not installed (missing {', '.join(missing)}): run {INSTALL_COMMAND}")
    port, mon_port = port or free_port(), mon_port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rgw-"))
    for sub in ("run", "log", "mon.a", "osd.0", "rgw"):
        (workdir / sub).mkdir()
    conf = workdir / "ceph.conf"
    conf.write_text(CONF.format(fsid=uuid.uuid4(), mon_port=mon_port, rgw_port=port, dir=workdir))
    setup_log = workdir / "log" / "setup.log"
    ceph = ["ceph", "--connect-timeout", "20"]
    server = RGW(f"http://127.0.0.1:{port}", workdir=workdir)
    try:
        _run(["monmaptool", "--create", "--add", "a", f"v1:127.0.0.1:{mon_port}", str(workdir / "monmap")],
             conf, setup_log)  # fmt: skip
        _run(["ceph-mon", "--mkfs", "-i", "a", "--monmap", str(workdir / "monmap")], conf, setup_log)
        server.procs.append(_daemon(["ceph-mon", "-i", "a"], conf, workdir / "log" / "mon.stdout"))
        osd_uuid = str(uuid.uuid4())
        _run([*ceph, "osd", "new", osd_uuid], conf, setup_log)  # registers osd.0 with this uuid
        _run(["ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], conf, setup_log)
        _run([*ceph, "osd", "crush", "add-bucket", "localhost", "host"], conf, setup_log)
        _run([*ceph, "osd", "crush", "move", "localhost", "root=default"], conf, setup_log)
        _run([*ceph, "osd", "crush", "add", "osd.0", "1.0", "host=localhost"], conf, setup_log)
        server.procs.append(_daemon(["ceph-osd", "-i", "0"], conf, workdir / "log" / "osd.stdout"))

        def osd_up() -> bool:
            done = subprocess.run([*ceph, "-c", str(conf), "osd", "stat"], capture_output=True, timeout=30)
            return b"1 up" in done.stdout

        _wait(osd_up, "the OSD is not up", 60, workdir, server.procs)
        server.procs.append(_daemon(["radosgw", "-n", "client.rgw.a"], conf, workdir / "log" / "rgw.stdout"))

        def serving() -> bool:
            try:
                with urllib.request.urlopen(server.endpoint, timeout=2):
                    return True
            except OSError:
                return False

        _wait(serving, "radosgw does not answer", 90, workdir, server.procs)
        _run(["radosgw-admin", "user", "create", "--uid=test", "--display-name=test",
              f"--access-key={ACCESS_KEY}", f"--secret={SECRET_KEY}"], conf, setup_log)  # fmt: skip
    except BaseException:
        server.stop()
        raise
    return server


def from_env_or_start() -> RGW:
    endpoint = os.environ.get("TRIGGERBUS_TEST_RGW")
    return RGW(endpoint.rstrip("/")) if endpoint else start()


if __name__ == "__main__":  # python -m tests.support.rgw [--install] [PORT]
    args = sys.argv[1:]
    if "--install" in args:
        install()
        args.remove("--install")
        if not args:
            sys.exit(0)
    rgw = start(int(args[0]) if args else None)
    print(rgw.endpoint, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(proc.poll() is None for proc in rgw.procs):
            time.sleep(1)
        sys.exit("a Ceph daemon exited")
    finally:
        rgw.stop()
