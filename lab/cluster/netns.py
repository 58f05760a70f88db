"""Hosts made of network namespaces: one bridge namespace, a veth pair per host, addresses.

Nothing here touches the root namespace's links, addresses or routes: the bridge lives in a
namespace of its own, and each veth pair is created there with one end moved straight into
its host. Deleting the namespaces removes every link with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# setns(2)'s flag for a network namespace (linux/sched.h); Python 3.11 has no os.setns.
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
BRIDGE = "br0"
# The host's end of its veth pair, inside the host's namespace.
HOST_LINK = "eth0"
COMMAND_TIMEOUT_S = 30.0


class NetnsError(RuntimeError):
    """A namespace could not be made, entered or removed; the message says which and why."""


def ip_command(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip *args`; raise NetnsError with its stderr when it fails and `check` is set."""
    done = subprocess.run(  # noqa: S603  (our own arguments, no shell)
        ["ip", *args],  # noqa: S607  (iproute2's ip, wherever PATH has it)
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    """Return the names of the namespaces `ip netns` knows (the files under /run/netns)."""
    listed = ip_command("netns", "list").stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def unusable_reason() -> str | None:
    """Return why this process cannot build namespaces here, or None when it can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run as root"
    probe = f"dscl-probe-{os.getpid()}"
    added = ip_command("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` is not permitted here: {added.stderr.strip()}"
    ip_command("netns", "delete", probe, check=False)
    return None


def root_overlaps(network: ipaddress.IPv4Network) -> list[str]:
    """Return the root namespace's addresses and routes that overlap `network`."""
    found = []
    for kind in ("addr", "route"):
        for line in ip_command("-o", "-4", kind, "show").stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_network(word, strict=False).overlaps(network):
                        found.append(line.strip())
                        break
    return found


def run_in_namespace(name: str, function: Callable[[], T]) -> T:
    """Run `function` on a new thread inside namespace `name`; return its result or raise.

    setns(2) moves only the calling thread, so the rest of this process stays where it is;
    sockets the function opens belong to the namespace.
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            enter(name)
            outcome.append(function())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def enter(name: str) -> None:
    """Move the calling thread into network namespace `name` (for threads started for it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise NetnsError(f"setns into {name}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


def exec_prefix(name: str) -> list[str]:
    """Return the argv prefix that runs a command in namespace `name` (ip execs it: same PID)."""
    return ["ip", "netns", "exec", name]


@dataclass(frozen=True)
class Host:
    """One host: its namespace, its address on the test network, its veth end on the bridge."""

    role: str
    namespace: str
    address: str
    bridge_port: str


class Network:
    """The test network: a bridge namespace and the hosts plugged into it."""

    def __init__(self, prefix: str, subnet: ipaddress.IPv4Network) -> None:
        self.prefix = prefix
        self.subnet = subnet
        self.bridge_namespace = f"{prefix}-br"
        self.hosts: dict[str, Host] = {}

    def names(self, roles: Sequence[str]) -> list[str]:
        """Return every namespace name the network uses for `roles`, the bridge's first."""
        return [self.bridge_namespace, *(f"{self.prefix}-{role}" for role in roles)]

    def create_bridge(self) -> None:
        """Create the bridge namespace and its bridge, up."""
        ip_command("netns", "add", self.bridge_namespace)
        ip_command("-n", self.bridge_namespace, "link", "set", "lo", "up")
        ip_command("-n", self.bridge_namespace, "link", "add", BRIDGE, "type", "bridge")
        ip_command("-n", self.bridge_namespace, "link", "set", BRIDGE, "up")

    def add_host(self, role: str, host_number: int) -> Host:
        """Create namespace <prefix>-<role> with address .`host_number`, plugged into the bridge."""
        namespace = f"{self.prefix}-{role}"
        address = str(self.subnet.network_address + host_number)
        # Names on the bridge side only have to be unique in the bridge namespace (15 bytes max).
        port = f"v-{role}"[:15]
        ip_command("netns", "add", namespace)
        # Both ends are born in the bridge namespace and one moves straight to the host: no
        # link ever appears in the root namespace.
        ip_command(
            "-n", self.bridge_namespace, "link", "add", port, "type", "veth",
            "peer", "name", HOST_LINK, "netns", namespace,
        )  # fmt: skip
        ip_command("-n", self.bridge_namespace, "link", "set", port, "master", BRIDGE, "up")
        ip_command("-n", namespace, "link", "set", "lo", "up")
        prefix_length = str(self.subnet.prefixlen)
        ip_command("-n", namespace, "addr", "add", f"{address}/{prefix_length}", "dev", HOST_LINK)
        ip_command("-n", namespace, "link", "set", HOST_LINK, "up")
        host = Host(role, namespace, address, port)
        self.hosts[role] = host
        return host

    def set_link(self, role: str, up: bool) -> None:
        """Bring a host's link up or down: down cuts it off the network; its processes live on."""
        namespace = self.hosts[role].namespace
        ip_command("-n", namespace, "link", "set", HOST_LINK, "up" if up else "down")


def remove_namespaces(names: Sequence[str], timeout: float = 10.0) -> list[str]:
    """SIGKILL what still runs in the namespaces `names`, delete them, return those deleted.

    Only namespaces this tool created carry these names, so the processes in them are ones it
    started (or a crashed run of it did). A namespace deleted while a process still holds it
    would live on, unnamed, until that process ends: hence the kill first.
    """
    existing = set(namespaces())
    removed = []
    for name in names:
        if name not in existing:
            continue
        deadline = time.monotonic() + timeout
        while pids := namespace_pids(name):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                raise NetnsError(f"processes {pids} in namespace {name} outlived SIGKILL")
            time.sleep(0.05)
        ip_command("netns", "delete", name)
        removed.append(name)
    return removed


def namespace_pids(name: str) -> list[int]:
    """Return the live processes in namespace `name` (zombies left out: they hold nothing)."""
    listed = ip_command("netns", "pids", name, check=False).stdout.split()
    return [int(pid) for pid in listed if pid.isdigit() and not zombie(int(pid))]


def zombie(pid: int) -> bool:
    """Return whether `pid` has exited and waits to be reaped (or is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The state follows the parenthesised command name, which may contain spaces.
            return stat.read().rpartition(")")[2].split()[0] in {"Z", "X"}
    except FileNotFoundError:
        return True
