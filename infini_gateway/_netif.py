"""
The host side of the floating IP, Linux first: the interfaces and their
IPv4 addresses, the capabilities the gateway holds, adding and removing an
address (iproute2's C{ip}, else C{ifconfig}), and gratuitous ARP from a raw
socket.

Nothing here runs at import time, so the module imports anywhere (macOS
included); what a platform lacks is reported when it is used.
"""

import errno
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

log = Logger()

# Linux capability numbers (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

_ETH_P_ARP = 0x0806
_BROADCAST_MAC = b"\xff" * 6
# Linux's ioctls for an interface's primary IPv4 address and netmask.
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B

#: How long one C{ip} or C{ifconfig} run may take before it is killed.
COMMAND_TIMEOUT = 5.0


class AddressError(Exception):
    """An address could not be added or removed; the message says why."""


@attrs.frozen
class InterfaceAddress:
    """One IPv4 address of an interface; C{primary} unless the kernel says secondary."""

    address: ipaddress.IPv4Interface
    primary: bool = True


@attrs.frozen
class Interface:
    """A network interface and its IPv4 addresses, primary first."""

    name: str
    index: int
    addresses: Tuple[InterfaceAddress, ...] = ()
    loopback: bool = False

    @property
    def primary(self) -> Optional[ipaddress.IPv4Interface]:
        """The first primary IPv4 address, if any."""
        for item in self.addresses:
            if item.primary:
                return item.address
        return None

    def has(self, ip: ipaddress.IPv4Address) -> Optional[InterfaceAddress]:
        """The address C{ip} as this interface holds it, if it does."""
        for item in self.addresses:
            if item.address.ip == ip:
                return item
        return None


def _parse_ip_json(text: str) -> List[Interface]:
    found = []
    for link in json.loads(text or "[]"):
        addresses = []
        for info in link.get("addr_info", ()):
            if info.get("family") != "inet" or "local" not in info:
                continue
            address = ipaddress.IPv4Interface(
                f"{info['local']}/{info.get('prefixlen', 32)}"
            )
            addresses.append(
                InterfaceAddress(address, primary=not info.get("secondary", False))
            )
        addresses.sort(key=lambda item: not item.primary)
        found.append(
            Interface(
                name=link["ifname"],
                index=int(link.get("ifindex", 0)),
                addresses=tuple(addresses),
                loopback="LOOPBACK" in link.get("flags", ()),
            )
        )
    return found


def _ioctl_address(sock: socket.socket, name: str, request: int) -> Optional[str]:
    import fcntl

    packed = struct.pack("256s", name.encode()[:15])
    try:
        result = fcntl.ioctl(sock.fileno(), request, packed)
    except OSError:
        return None
    return socket.inet_ntoa(result[20:24])


def _interfaces_by_ioctl() -> List[Interface]:
    # Without iproute2: primary addresses only, which is what defaults need.
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            ip = _ioctl_address(sock, name, _SIOCGIFADDR)
            mask = _ioctl_address(sock, name, _SIOCGIFNETMASK)
            addresses: Tuple[InterfaceAddress, ...] = ()
            if ip is not None:
                addresses = (
                    InterfaceAddress(ipaddress.IPv4Interface(f"{ip}/{mask or '32'}")),
                )
            loopback = ip is not None and ipaddress.IPv4Address(ip).is_loopback
            found.append(Interface(name, index, addresses, loopback))
    return found


def list_interfaces() -> List[Interface]:
    """
    The host's interfaces and their IPv4 addresses, in index order: from
    C{ip -j -4 addr show} (which knows secondary addresses), else from the
    kernel's ioctls (primary addresses only).

    @raise OSError: when neither works here.
    """
    ip = shutil.which("ip")
    if ip is not None:
        try:
            out = subprocess.run(
                [ip, "-j", "-4", "addr", "show"],
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=True,
            )
            return sorted(_parse_ip_json(out.stdout), key=lambda i: i.index)
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            log.warn(
                "ip -j addr failed ({error}); reading the interfaces by ioctl", error=e
            )
    return sorted(_interfaces_by_ioctl(), key=lambda i: i.index)


def effective_capabilities(status_path: str = "/proc/self/status") -> Optional[int]:
    """This process's effective capability set (C{CapEff}), or None if unknown."""
    try:
        with open(status_path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def missing_capabilities(
    capabilities: Optional[int] = None, euid: Optional[int] = None
) -> List[str]:
    """
    The capabilities a floating IP needs that this process lacks:
    CAP_NET_ADMIN (to add and remove the address) and CAP_NET_RAW (to send
    gratuitous ARP).  Where there is no C{/proc}, root is taken to have them.
    """
    if capabilities is None:
        capabilities = effective_capabilities()
    if capabilities is None:
        if euid is None:
            euid = os.geteuid()
        return [] if euid == 0 else ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    return [
        name
        for name, bit in (
            ("CAP_NET_ADMIN", CAP_NET_ADMIN),
            ("CAP_NET_RAW", CAP_NET_RAW),
        )
        if not capabilities >> bit & 1
    ]


class _Collect(protocol.ProcessProtocol):
    """Collects a short command's output; fires with (stdout, stderr, exit code)."""

    def __init__(self, done: defer.Deferred) -> None:
        self.done = done
        self.out: List[bytes] = []
        self.err: List[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if code is None and signal is not None:
            code = -signal
        self.done.callback(
            (
                b"".join(self.out).decode(errors="replace"),
                b"".join(self.err).decode(errors="replace"),
                code if code is not None else -1,
            )
        )


def run_command(reactor: Any, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT):
    """
    Run C{argv} off the reactor thread (C{spawnProcess}), killed after
    C{timeout} seconds; a Deferred firing with C{(stdout, stderr, code)}.
    """
    done: defer.Deferred = defer.Deferred()
    collect = _Collect(done)
    transport = reactor.spawnProcess(
        collect,
        argv[0],
        list(argv),
        env={
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LC_ALL": "C",
        },
    )

    def kill() -> None:
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    timer = reactor.callLater(timeout, kill)

    def finished(result):
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(finished)


class IPRouteAddresses:
    """Adds and removes the address with iproute2: C{ip -4 addr add|del IP/LEN dev IF}."""

    tool = "ip"

    def __init__(self, reactor: Any, path: str, runner: Callable = run_command) -> None:
        self.reactor = reactor
        self.path = path
        self._run = runner

    def _argv(
        self, verb: str, address: ipaddress.IPv4Interface, interface: str
    ) -> List[str]:
        return [self.path, "-4", "addr", verb, address.with_prefixlen, "dev", interface]

    def add(self, address: ipaddress.IPv4Interface, interface: str):
        """Fires True when added, False when the interface already had it."""
        return self._change("add", address, interface, ("exists", "already assigned"))

    def remove(self, address: ipaddress.IPv4Interface, interface: str):
        """Fires True when removed, False when the interface did not have it."""
        return self._change("del", address, interface, ("not found", "Cannot assign"))

    def _change(self, verb, address, interface, unchanged: Sequence[str]):
        argv = self._argv(verb, address, interface)

        def done(result) -> bool:
            out, err, code = result
            if code == 0:
                return True
            if any(text in err for text in unchanged):
                return False
            why = (err or out).strip() or f"exit status {code}"
            raise AddressError(f"{' '.join(argv)}: {why}")

        return self._run(self.reactor, argv).addCallback(done)


class IfconfigAddresses(IPRouteAddresses):
    """
    The same with net-tools where iproute2 is missing: an alias interface
    C{IF:LABEL} holds the address (Linux's ifconfig way).
    """

    tool = "ifconfig"

    def _alias(self, address: ipaddress.IPv4Interface, interface: str) -> str:
        return f"{interface}:{int(address.ip) & 0xFF}"

    def _argv(
        self, verb: str, address: ipaddress.IPv4Interface, interface: str
    ) -> List[str]:
        alias = self._alias(address, interface)
        if verb == "add":
            return [
                self.path,
                alias,
                str(address.ip),
                "netmask",
                str(address.netmask),
                "up",
            ]
        return [self.path, alias, "down"]


def address_manager(reactor: Any) -> IPRouteAddresses:
    """The address manager this host supports: C{ip}, else C{ifconfig}."""
    for cls in (IPRouteAddresses, IfconfigAddresses):
        path = shutil.which(cls.tool) or next(
            (
                candidate
                for candidate in (f"/usr/sbin/{cls.tool}", f"/sbin/{cls.tool}")
                if os.access(candidate, os.X_OK)
            ),
            None,
        )
        if path is not None:
            return cls(reactor, path)
    raise AddressError("neither ip (iproute2) nor ifconfig (net-tools) is installed")


def arp_frames(mac: bytes, ip: ipaddress.IPv4Address) -> Tuple[bytes, bytes]:
    """
    The two gratuitous ARP frames announcing that C{ip} is at C{mac}, both
    to the Ethernet broadcast address: a request (sender = target = C{ip},
    target MAC zero, RFC 5227's announcement) and a reply (target MAC
    broadcast), which some equipment heeds instead.
    """
    vip = ip.packed
    ethernet = _BROADCAST_MAC + mac + struct.pack("!H", _ETH_P_ARP)
    header = struct.pack("!HHBB", 1, 0x0800, 6, 4)
    request = ethernet + header + struct.pack("!H", 1) + mac + vip + b"\x00" * 6 + vip
    reply = ethernet + header + struct.pack("!H", 2) + mac + vip + _BROADCAST_MAC + vip
    return request, reply


class GratuitousARP:
    """
    Announces an address by gratuitous ARP from an C{AF_PACKET} socket
    bound to the interface, opened once and kept (it needs CAP_NET_RAW,
    and closing one costs milliseconds the take-over path cannot spare).
    """

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.mac: Optional[bytes] = None
        self._socket: Optional[socket.socket] = None

    def open(self) -> None:
        """@raise OSError: no raw socket here (no privilege, or not Linux)."""
        if self._socket is not None:
            return
        family = getattr(socket, "AF_PACKET", None)
        if family is None:
            raise OSError(errno.EAFNOSUPPORT, "AF_PACKET sockets are Linux-only")
        sock = socket.socket(family, socket.SOCK_RAW, socket.htons(_ETH_P_ARP))
        try:
            sock.bind((self.interface, _ETH_P_ARP))
            sock.setblocking(False)
            self.mac = sock.getsockname()[4]
        except OSError:
            sock.close()
            raise
        if len(self.mac) != 6:
            sock.close()
            raise OSError(errno.EINVAL, f"{self.interface} has no Ethernet address")
        self._socket = sock

    def announce(self, ip: ipaddress.IPv4Address) -> None:
        """Send both frames once. @raise OSError: when the interface refuses them."""
        if self._socket is None or self.mac is None:
            raise OSError(errno.EBADF, "the ARP socket is not open")
        for frame in arp_frames(self.mac, ip):
            self._socket.send(frame)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
