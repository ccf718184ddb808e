"""What an address is, for the SSRF guard (`net.guard`): pure, no I/O.

* `classify` says why an address may not be reached (a label such as "private", "loopback",
  "IPv4-mapped link-local"), or None for public unicast. IPv6 forms that carry an IPv4 address
  are judged by the IPv4 address they lead to.
* `parse_ipv4_like` reads IPv4 literals in every spelling the OS resolver accepts
  (`2130706433`, `0177.0.0.1`, `0x7f.1`), so they are judged as the address they denote and
  never passed on as opaque names.
* `normalise_name` / `config_host` put host names into the form URLs are compared in, and
  `valid_hostname` says whether a name is one a resolver may be asked about.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IPV4_NUMBER_RE = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")


# --------------------------------------------------------------------------------------------
# Address classification


def _networks(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Ordered: the first match names the refusal. Written out rather than trusting `is_global`
# alone, whose lists differ between Python versions (3.11 calls ::8.8.8.8, fec0::1 and
# 192.0.0.9 global); `is_global` stays as the final catch-all.
_V4_RULES: tuple[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], str], ...] = (
    (_networks("0.0.0.0/32"), "unspecified"),
    (_networks("0.0.0.0/8"), "reserved"),
    (_networks("127.0.0.0/8"), "loopback"),
    (_networks("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "private"),
    (_networks("100.64.0.0/10"), "shared (carrier-grade NAT)"),
    (_networks("169.254.0.0/16"), "link-local"),
    (_networks("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "documentation"),
    (_networks("198.18.0.0/15"), "benchmarking"),
    (_networks("192.0.0.0/24", "192.88.99.0/24"), "reserved"),
    (_networks("224.0.0.0/4"), "multicast"),
    (_networks("255.255.255.255/32"), "broadcast"),
    (_networks("240.0.0.0/4"), "reserved"),
)
_V6_RULES: tuple[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], str], ...] = (
    (_networks("::/128"), "unspecified"),
    (_networks("::1/128"), "loopback"),
    (_networks("64:ff9b:1::/48"), "private (local-use NAT64)"),
    (_networks("fc00::/7", "fec0::/10"), "private"),
    (_networks("fe80::/10"), "link-local"),
    (_networks("ff00::/8"), "multicast"),
    (_networks("2001:db8::/32", "3fff::/20"), "documentation"),
    (_networks("2001:2::/48"), "benchmarking"),
    (_networks("2001::/32"), "Teredo tunnel"),
    (_networks("100::/64", "2001::/23", "5f00::/16"), "reserved"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
# Never fetchable, even from an allowed host or network.
ALWAYS_REFUSED = frozenset({"unspecified", "broadcast", "multicast"})


def _classify_v4(address: ipaddress.IPv4Address) -> str | None:
    for networks, label in _V4_RULES:
        if any(address in n for n in networks):
            return label
    return None if address.is_global else "non-public"


def classify(address: IPAddress) -> str | None:
    """Why `address` may not be fetched (a label such as "private"), or None if it is public.

    IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged
    by the IPv4 address they lead to, because that is where the packets end up.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _classify_v4(address)
    if address.ipv4_mapped is not None:
        label = _classify_v4(address.ipv4_mapped)
        return None if label is None else f"IPv4-mapped {label}"
    if address in _NAT64:
        label = _classify_v4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return None if label is None else f"NAT64 {label}"
    if address.sixtofour is not None:
        label = _classify_v4(address.sixtofour)
        if label is not None:
            return f"6to4 {label}"
    if address.teredo is not None:
        for embedded in address.teredo:
            label = _classify_v4(embedded)
            if label is not None:
                return f"Teredo {label}"
    for networks, label in _V6_RULES:
        if any(address in n for n in networks):
            return label
    if address in _V4_COMPATIBLE:
        # Deprecated IPv4-compatible form (::a.b.c.d): name the embedded address's problem.
        label = _classify_v4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return f"IPv4-compatible {label}" if label is not None else "reserved"
    if address not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None if address.is_global else "non-public"


def show(address: IPAddress) -> str:
    """Display form; IPv4-mapped addresses as `::ffff:a.b.c.d` on every Python version."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def connect_address(address: IPAddress) -> IPAddress:
    """The address to actually connect to: an IPv4-mapped IPv6 address means its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# --------------------------------------------------------------------------------------------
# Host names and IPv4 literals


def normalise_name(host: str) -> str:
    host = host.strip().lower()
    return host[:-1] if host.endswith(".") and len(host) > 1 else host


def config_host(host: str) -> str:
    """A configured host name in the form URLs are compared in: lower-case ASCII (IDNA)."""
    host = normalise_name(host)
    prefix = "*." if host.startswith("*.") else ""
    try:
        return prefix + host[len(prefix) :].encode("idna").decode("ascii")
    except UnicodeError:
        return host


def parse_ipv4_like(host: str) -> ipaddress.IPv4Address | None:
    """Parse `host` the way inet_aton / getaddrinfo (and browsers) read IPv4 literals.

    1 to 4 dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part fills
    the remaining bytes: `2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1.
    Returns None when `host` is a name. Raises ValueError for a host that ends in a number but
    is no valid address (`1.2.3.999`, `08.0.0.1`, `foo.123`): the OS might read those in some
    other way, so they are refused rather than guessed at (as the WHATWG URL standard does).
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels = labels[:-1]
    if not _IPV4_NUMBER_RE.match(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError("too many parts")
    numbers: list[int] = []
    for label in labels:
        if re.fullmatch(r"0[xX][0-9a-fA-F]{0,8}", label):
            numbers.append(int(label[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]{1,11}", label):
            numbers.append(int(label, 8))
        elif re.fullmatch(r"0|[1-9][0-9]{0,9}", label):
            numbers.append(int(label))
        else:
            raise ValueError(f"bad part {label!r}")
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (4 - len(leading)):
        raise ValueError("part out of range")
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def valid_hostname(name: str) -> bool:
    """A normalised name (`normalise_name`) that is a syntactically valid DNS host name."""
    return len(name) <= 253 and _HOSTNAME_RE.match(name) is not None
