"""The sender model: a category and a trust score for each (source, record). See docs/MODEL.md.

Version ``sender-v1`` is a transparent scoring model: features from authentication results
and the source network, a fixed decision list for the category, and a logistic score for
trust. Its version is written into every enriched row and the materialization metadata, so
a change of model is visible in the data (and re-enrichment with a new model re-publishes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MODEL_VERSION = "sender-v1"

CATEGORIES = ("authorized", "forwarder", "misconfigured", "suspicious", "spoof", "unknown")
HOSTING_TYPES = {"Web Host", "IaaS", "PaaS", "VPS"}
MAIL_TYPES = {"Email Provider", "Marketing", "SaaS", "Email Security", "Technology"}

# Logistic weights (log-odds) of trust; documented in docs/MODEL.md.
WEIGHTS = {
    "bias": -1.0,
    "dmarc_pass": 2.2,
    "dkim_aligned": 1.2,
    "spf_aligned": 0.8,
    "unaligned_pass": 0.6,
    "known_mail_service": 0.7,
    "hosting_network": -1.3,
    "no_auth_results": -0.4,
    "unknown_network": -0.5,
}


@dataclass(frozen=True)
class Features:
    dmarc_pass: bool
    dkim_aligned: bool
    spf_aligned: bool
    dkim_pass: bool  # any DKIM pass, aligned or not
    spf_pass: bool  # any SPF pass, aligned or not
    has_auth_results: bool
    service_type: str | None
    known_service: bool


def category(f: Features) -> str:
    """A decision list, first match wins."""
    if f.dkim_aligned and f.spf_aligned:
        return "authorized"
    if f.dkim_aligned and not f.spf_pass:
        return "forwarder"  # the signature survived a hop that broke SPF
    if f.dmarc_pass:
        return "authorized"  # aligned one way, and the other way not failed by a forwarding hop
    if f.dkim_pass or f.spf_pass:
        return "misconfigured"  # authenticates, but as another domain
    if not f.has_auth_results and f.service_type is None:
        return "unknown"
    if f.service_type in HOSTING_TYPES or not f.known_service:
        return "spoof"
    return "suspicious"  # fails everything from a network that does send mail: a compromised or odd sender


def trust_score(f: Features) -> float:
    z = WEIGHTS["bias"]
    z += WEIGHTS["dmarc_pass"] * f.dmarc_pass
    z += WEIGHTS["dkim_aligned"] * f.dkim_aligned
    z += WEIGHTS["spf_aligned"] * f.spf_aligned
    z += WEIGHTS["unaligned_pass"] * ((f.dkim_pass or f.spf_pass) and not f.dmarc_pass)
    z += WEIGHTS["known_mail_service"] * (f.service_type in MAIL_TYPES)
    z += WEIGHTS["hosting_network"] * (f.service_type in HOSTING_TYPES)
    z += WEIGHTS["no_auth_results"] * (not f.has_auth_results)
    z += WEIGHTS["unknown_network"] * (not f.known_service)
    return round(1 / (1 + math.exp(-z)), 4)


def categories(
    dmarc_pass, dkim_aligned, spf_aligned, dkim_pass, spf_pass, has_auth_results, service_type, known_service
) -> np.ndarray:
    """``category`` for whole columns at once (numpy boolean arrays, ``service_type`` an object
    array): the same decision list, first match wins (a test checks every combination)."""
    hosting = np.isin(service_type, list(HOSTING_TYPES))
    conditions = [
        dkim_aligned & spf_aligned,
        dkim_aligned & ~spf_pass,
        dmarc_pass,
        dkim_pass | spf_pass,
        ~has_auth_results & pd.isna(service_type),
        hosting | ~known_service,
    ]
    choices = ["authorized", "forwarder", "authorized", "misconfigured", "unknown", "spoof"]
    return np.select(conditions, choices, default="suspicious").astype(object)


def trust_scores(
    dmarc_pass, dkim_aligned, spf_aligned, dkim_pass, spf_pass, has_auth_results, service_type, known_service
) -> np.ndarray:
    """``trust_score`` for whole columns at once."""
    z = np.full(len(dmarc_pass), WEIGHTS["bias"])
    z += WEIGHTS["dmarc_pass"] * dmarc_pass
    z += WEIGHTS["dkim_aligned"] * dkim_aligned
    z += WEIGHTS["spf_aligned"] * spf_aligned
    z += WEIGHTS["unaligned_pass"] * ((dkim_pass | spf_pass) & ~dmarc_pass)
    z += WEIGHTS["known_mail_service"] * np.isin(service_type, list(MAIL_TYPES))
    z += WEIGHTS["hosting_network"] * np.isin(service_type, list(HOSTING_TYPES))
    z += WEIGHTS["no_auth_results"] * ~has_auth_results
    z += WEIGHTS["unknown_network"] * ~known_service
    return np.round(1 / (1 + np.exp(-z)), 4)
