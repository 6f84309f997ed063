"""Several hosts on one machine for tests of what crosses a network: Linux network namespaces on a bridge.

Each host is a network namespace with one veth whose other end is a port of a bridge in the root
namespace. The bridge holds the subnet's .1 address, so the test process (root namespace) reaches every
host, and the hosts reach each other through the bridge. Taking a host's bridge port down
(`partition`) cuts it off from everyone without touching its processes: packets to and from it are
dropped, as when a cable is pulled. Names carry a random run id and each run picks a free /24 in
10.77.0.0/16, so parallel runs do not collide; `close()` removes every link and namespace it made.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass

SUPERNET = ipaddress.IPv4Network("10.77.0.0/16")


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here (None when they can): not Linux, not root, no iproute2,
    or `ip netns add` refused (a container without CAP_SYS_ADMIN / CAP_NET_ADMIN)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return f"network namespaces need root (euid {os.geteuid()}); run the test as root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"smprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"`ip netns add` does not work here: {exc}"
    _try("netns", "del", probe)
    return None


@dataclass(frozen=True)
class Host:
    """One namespace: its role, name, address on the bridge's subnet and bridge-side veth."""

    role: str
    netns: str
    address: str
    veth: str  # the root-namespace end of the host's veth pair: a bridge port

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.netns]


class Network:
    """A bridge in the root namespace and one namespace per added host. Use as a context manager."""

    def __init__(self) -> None:
        self.run_id = secrets.token_hex(3)
        self.subnet = _free_subnet()
        self.bridge = f"smb{self.run_id}"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._veths: list[str] = []
        self._bridge_made = False
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @property
    def gateway(self) -> str:
        """The root namespace's address on the subnet (the bridge's)."""
        return str(self.subnet.network_address + 1)

    def add(self, role: str) -> Host:
        """A new namespace on the bridge with the subnet's next address, loopback up."""
        index = len(self.hosts) + 2
        netns, veth, peer = f"sm{self.run_id}-{role}", f"smv{self.run_id}{index}", f"smp{self.run_id}{index}"
        address = str(self.subnet.network_address + index)
        _ip("netns", "add", netns)
        self._namespaces.append(netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        self._veths.append(veth)
        _ip("link", "set", peer, "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", peer)
        _ip("-n", netns, "link", "set", peer, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        host = Host(role, netns, address, veth)
        self.hosts.append(host)
        return host

    def partition(self, host: Host) -> None:
        """Cut `host` off the network (its bridge port down); its processes keep running."""
        _ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def close(self) -> None:
        """Remove every veth, namespace and the bridge made (best effort: each step runs even if one fails).
        Stop the processes running in the namespaces first."""
        errors = []
        for veth in self._veths:  # deleting one end deletes the pair now (not when the namespace is freed)
            errors += _try("link", "del", veth)
        for netns in self._namespaces:
            errors += _try("netns", "del", netns)
        if self._bridge_made:
            errors += _try("link", "del", self.bridge)
        self._veths, self._namespaces, self._bridge_made = [], [], False
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _try(*args: str) -> list[str]:
    try:
        _ip(*args)
    except NetnsError as exc:
        return [str(exc)]
    return []


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of SUPERNET that overlaps no route of the root namespace (another run's bridge, or a
    real network that happens to use these addresses)."""
    taken: list[ipaddress.IPv4Network] = []
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        dest = line.split()[0] if line.split() else "default"
        if dest[0].isdigit():
            taken.append(ipaddress.IPv4Network(dest, strict=False))
    free = [
        subnet
        for subnet in SUPERNET.subnets(new_prefix=24)
        if 0 < subnet.network_address.packed[2] < 255 and not any(subnet.overlaps(t) for t in taken)
    ]
    if not free:
        raise NetnsError(f"no free /24 left in {SUPERNET}")
    return free[secrets.randbelow(len(free))]
