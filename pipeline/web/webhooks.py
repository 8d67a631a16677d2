"""Webhook targets a tenant chooses, delivered to without reaching the hosting network.

A tenant sets its webhook URL, so the URL is hostile until checked (issue #21):

* **HTTPS only**, unless ``PIPELINE_WEBHOOK_ALLOW_HTTP=1`` (a receiver on a trusted network);
* **public addresses only**: the host is resolved and every address must be globally routable
  (no loopback, private, link-local, cloud metadata, CGNAT, multicast, reserved or unspecified
  address, in IPv4 or IPv6, mapped or not), unless ``PIPELINE_WEBHOOK_ALLOW_PRIVATE=1``;
* the delivery **connects to the address that was checked** (no second resolution that a
  rebinding DNS server could answer differently), with the URL's host name as the TLS server
  name and the ``Host`` header, and follows no redirect;
* one **overall deadline** per delivery (``PIPELINE_WEBHOOK_TIMEOUT_S``): connect, TLS, send and
  the status line together, however slowly a receiver drips its bytes;
* the reason a delivery failed goes to the operator's log; the tenant sees a generic one
  (``GENERIC_FAILURE``), so the Alerts page is no port scanner.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline import config

GENERIC_FAILURE = "not delivered: the receiver did not answer with a 2xx status in time (retried)"
MAX_STATUS_LINE = 8 * 1024


class WebhookRefused(ValueError):
    """The URL is not a webhook target this service delivers to; the message says why."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written in the URL (the TLS server name and Host header)
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]  # the checked addresses, in resolution order

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check(url: str, resolve=socket.getaddrinfo) -> Target:
    """The URL's target, resolved and checked; ``WebhookRefused`` naming what is wrong."""
    allow_http = config.get("PIPELINE_WEBHOOK_ALLOW_HTTP")
    allow_private = config.get("PIPELINE_WEBHOOK_ALLOW_PRIVATE")
    if any(c in url for c in "\r\n\t ") or len(url) > 2000:
        raise WebhookRefused("the webhook URL holds whitespace or is over 2,000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"the webhook URL is not a URL ({exc})") from None
    if parts.scheme not in ({"https", "http"} if allow_http else {"https"}):
        raise WebhookRefused(
            "the webhook URL must start with https://"
            + ("" if allow_http else " (plain http only where PIPELINE_WEBHOOK_ALLOW_HTTP=1)")
        )
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("the webhook URL must not carry a user name or password (user@host)")
    host = parts.hostname
    if not host:
        raise WebhookRefused("the webhook URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise WebhookRefused(f"the webhook host {host!r} does not resolve") from None
    addresses = tuple(dict.fromkeys(info[4][0] for info in found))
    if not addresses:
        raise WebhookRefused(f"the webhook host {host!r} does not resolve")
    if not allow_private and not all(_public(a) for a in addresses):
        raise WebhookRefused(
            f"the webhook host {host!r} resolves to an address that is not public (loopback, private, link-local "
            "or metadata): webhooks go to the internet only"
        )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, addresses)


def post(target: Target, body: bytes, headers: dict[str, str], deadline_s: float | None = None, context=None) -> int:
    """POST ``body`` to the checked target within one overall deadline; the HTTP status.
    Raises ``OSError`` (a ``TimeoutError`` past the deadline) on any failure."""
    deadline = time.monotonic() + (deadline_s or float(config.get("PIPELINE_WEBHOOK_TIMEOUT_S")))

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the webhook delivery's deadline passed")
        return left

    head = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += ["Connection: close", "User-Agent: dmarc-pipeline-webhook/1"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    last: OSError | None = None
    for address in target.addresses:  # the checked addresses only: never resolved again
        try:
            sock = socket.create_connection((address, target.port), timeout=remaining())
        except OSError as exc:
            last = exc
            continue
        try:
            if target.scheme == "https":
                context = context or ssl.create_default_context()
                sock.settimeout(remaining())
                sock = context.wrap_socket(sock, server_hostname=target.host)
            view = memoryview(request)
            while view:
                sock.settimeout(remaining())
                sent = sock.send(view)
                view = view[sent:]
            answer = b""
            while b"\r\n" not in answer:
                sock.settimeout(remaining())
                chunk = sock.recv(1024)
                if not chunk:
                    break
                answer += chunk
                if len(answer) > MAX_STATUS_LINE:
                    break
            status = answer.split(b"\r\n", 1)[0].split()
            if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
                raise ConnectionError("the receiver did not answer HTTP")
            return int(status[1])
        finally:
            sock.close()
    raise last or ConnectionError("no address to connect to")
