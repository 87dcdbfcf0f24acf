"""Separate "machines" on one box: Linux network namespaces joined by a bridge.

A hub namespace holds a bridge; every host is a namespace with one veth pair into it and an
address in a private /24 chosen at random (and checked unused), so a process in one host
reaches another only over that network, as between machines. The test process itself gets a
veth too (the administrator's machine). `close()` kills what still runs in the namespaces and
deletes them, which removes every veth with them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    name = "pgkprobe" + uuid.uuid4().hex[:6]
    made = ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or 'no message'}"
    ip("netns", "del", name, check=False)
    return None


@dataclass
class Host:
    name: str  # the namespace
    address: str

    def wrap(self) -> list[str]:
        """The prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.name]

    def pids(self) -> list[int]:
        out = ip("netns", "pids", self.name, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self) -> list[int]:
        """SIGKILL everything running on this host: a machine that dies."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


@dataclass
class Network:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    subnet: str = ""
    hosts: list[Host] = field(default_factory=list)
    root_link: str | None = None
    _next: int = 1

    def __post_init__(self) -> None:
        used = ip("-4", "addr").stdout + ip("-4", "route").stdout
        for _ in range(50):
            candidate = f"10.{random.randint(64, 250)}.{random.randint(0, 255)}"
            if f"{candidate}." not in used:
                self.subnet = candidate
                break
        else:
            raise RuntimeError("no free private /24 found")
        self.hub = f"pgk{self.tag}hub"
        ip("netns", "add", self.hub)
        self.namespaces = [self.hub]
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def _link(self, ns: str | None, label: str) -> str:
        """A veth pair from namespace `ns` (None: the root one) into the hub's bridge; its address."""
        self._next += 1
        n = self._next
        inner, outer = f"pk{self.tag}{n}a", f"pk{self.tag}{n}b"
        ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        ip("link", "set", outer, "netns", self.hub)
        ip("-n", self.hub, "link", "set", outer, "master", "br0")
        ip("-n", self.hub, "link", "set", outer, "up")
        address = f"{self.subnet}.{n}"
        if ns is not None:
            ip("link", "set", inner, "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
        else:
            ip("addr", "add", f"{address}/24", "dev", inner)
            ip("link", "set", inner, "up")
            self.root_link = inner
        return address

    def add_host(self, label: str) -> Host:
        name = f"pgk{self.tag}{label}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        host = Host(name, self._link(name, label))
        self.hosts.append(host)
        return host

    def hub_host(self) -> Host:
        """The hub itself as a host: its bridge gets the .1 address."""
        ip("-n", self.hub, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        return Host(self.hub, f"{self.subnet}.1")

    def join_root(self) -> str:
        """Give the test process (the root namespace) an address on the network."""
        return self._link(None, "root")

    def close(self) -> None:
        """Kill what runs in the namespaces, delete them (their veths go with them)."""
        for ns in reversed(self.namespaces):
            Host(ns, "").kill_all()
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        if self.root_link:
            ip("link", "del", self.root_link, check=False)  # normally gone with its peer already
