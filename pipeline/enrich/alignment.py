"""DMARC identifier alignment (RFC 7489 section 3.1), with organizational domains from the
public suffix list (the copy bundled with the publicsuffixlist package: no network)."""

from __future__ import annotations

import json
from functools import cache


@cache
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@cache
def organizational_domain(domain: str | None) -> str | None:
    if not domain:
        return None
    domain = domain.strip().lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(identifier: str | None, header_from: str | None, mode: str | None) -> bool:
    """Strict: the same domain. Relaxed (the default): the same organizational domain."""
    if not identifier or not header_from:
        return False
    identifier, header_from = identifier.strip().lower().rstrip("."), header_from.strip().lower().rstrip(".")
    if (mode or "r") == "s":
        return identifier == header_from
    return organizational_domain(identifier) == organizational_domain(header_from)


def dkim_aligned(dkim_auth_json: str | None, header_from: str | None, adkim: str | None) -> bool:
    """Any passing DKIM signature whose d= aligns with the From domain."""
    for result in json.loads(dkim_auth_json or "[]"):
        if result.get("result") == "pass" and aligned(result.get("domain"), header_from, adkim):
            return True
    return False


def spf_aligned(spf_auth_json: str | None, header_from: str | None, aspf: str | None) -> bool:
    """A passing SPF check of the MAIL FROM (or HELO) domain that aligns with the From domain."""
    for result in json.loads(spf_auth_json or "[]"):
        if result.get("result") == "pass" and aligned(result.get("domain"), header_from, aspf):
            return True
    return False


def any_pass(auth_json: str | None) -> bool:
    return any(r.get("result") == "pass" for r in json.loads(auth_json or "[]"))
