"""The enrichment itself, on pandas batches, column-wise: one implementation for the Spark tasks
and for the single-process baseline of the benchmarks.

Input: raw telemetry records (pipeline.telemetry.RAW_FIELDS). Output: enriched records
(ENRICHED_FIELDS) plus ``rescue_reason``: rows that do not fit the schema are kept, with the
reason, instead of being dropped.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator

import numpy as np
import pandas as pd

from pipeline.enrich import alignment, model, reference
from pipeline.telemetry import ENRICHED_FIELDS, RAW_FIELDS

RESCUE = "rescue_reason"
OUTPUT_COLUMNS = [*ENRICHED_FIELDS, RESCUE]


def event_id(customer_id: str, report_org: str, report_id: str, day: str, record_index: int) -> str:
    """Deterministic identity of one record of one report of one customer.

    The report's day is part of it, as it is of the raw object's key: anyone can mail a copy of
    a guessable report id dated another day, and that copy's rows must not take the real
    report's ids (its import would then fail on them)."""
    return hashlib.sha256(f"{customer_id}\n{report_org}\n{report_id}\n{day}\n{record_index}".encode()).hexdigest()[:32]


def _ip_info(ip: str, reader) -> dict:
    info = reader.get(ip) or {}
    asn = str(info.get("asn") or "").upper().removeprefix("AS")
    return {
        "country": info.get("country_code"),
        "continent": info.get("continent_code"),
        "asn": int(asn) if asn.isdigit() else None,
        "as_org": info.get("as_name"),
        "as_domain": (info.get("as_domain") or None),
    }


def _distinct(columns: list[pd.Series]) -> tuple[np.ndarray, list[tuple]]:
    """The distinct combinations of the columns' values: (code of each row, the combinations).

    Each column is factorized on its own (None is a value of its own), the codes are combined
    arithmetically and factorized again: all in C. The combinations are read back from the first
    row of each code.
    """
    rows = len(columns[0])
    if not rows:
        return np.zeros(0, dtype=np.int64), []
    combined = np.zeros(rows, dtype=np.int64)
    for column in columns:
        codes, uniques = pd.factorize(column.astype(object), use_na_sentinel=False)
        combined = combined * (len(uniques) + 1) + codes
    codes, uniques = pd.factorize(combined)
    first = np.empty(len(uniques), dtype=np.int64)
    first[codes[::-1]] = np.arange(rows)[::-1]
    picked = [column.astype(object).where(column.notna(), None).to_numpy()[first] for column in columns]
    return codes, list(zip(*picked, strict=True))


def _per_distinct(columns: list[pd.Series], function, outputs: int = 1, dtype=object) -> list[np.ndarray]:
    """``function(*values)`` once per distinct combination of the columns' values, spread back
    over the rows as ``outputs`` arrays (a loop per distinct value, never per row)."""
    codes, combinations = _distinct(columns)
    results = [function(*combination) for combination in combinations]
    if outputs == 1:
        results = [(r,) for r in results]
    return [np.asarray([r[n] for r in results] or [], dtype=dtype)[codes] for n in range(outputs)]


def _valid_ip(value) -> bool:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _empty(column: pd.Series) -> pd.Series:
    return column.isna() | (column.astype(str) == "")


def _rescue_reasons(frame: pd.DataFrame) -> pd.Series:
    """Why each row cannot be enriched (None when it can), column by column; the first failing
    check names the reason, in this order. Texts are built for the rescued rows only."""
    reasons = pd.Series(None, index=frame.index, dtype=object)

    def first(mask, text) -> None:
        todo = np.asarray(mask, dtype=bool) & reasons.isna().to_numpy()
        if todo.any():
            reasons[todo] = text if isinstance(text, str) else [text(v) for v in frame.loc[todo, text.column]]

    def says(column: str, template: str):
        def text(value) -> str:
            return template.format(repr(value))

        text.column = column
        return text

    for name in ("customer_id", "report_org", "report_id"):
        first(_empty(frame[name]), f"{name} is empty")
    first(frame["record_index"].isna(), "record_index is missing")
    [valid] = _per_distinct([frame["source_ip"]], _valid_ip, dtype=bool)
    first(~valid, says("source_ip", "source_ip {} is not an IP address"))
    count = pd.to_numeric(frame["message_count"], errors="coerce")
    first(count.isna() | (count < 0), says("message_count", "message_count {} is not a count"))
    first(frame["report_begin_ts"].isna(), says("report_begin", "report_begin {} is not a timestamp"))
    return reasons


def _event_ids(frame: pd.DataFrame) -> list:
    """sha256 of (customer, org, report id, day, record index): the warehouse's identity of a record.

    Arrow and pandas have no sha256 kernel, and existing warehouses hold these ids, so this is
    the one step that runs per row: one hash call each, on strings built column-wise (the
    report's part once per report).
    """
    days = frame["report_begin_ts"].dt.strftime("%Y-%m-%d").astype(object).where(frame["report_begin_ts"].notna(), "")
    codes, reports = _distinct([frame["customer_id"], frame["report_org"], frame["report_id"], days])
    prefixes = np.array([f"{c}\n{o}\n{r}\n{d}\n" for c, o, r, d in reports], dtype=object)
    index = frame["record_index"]
    text = prefixes[codes] + index.astype("Int64").astype(str).to_numpy(dtype=object)
    missing = index.isna().to_numpy()
    return [None if gone else hashlib.sha256(t.encode()).hexdigest()[:32] for t, gone in zip(text, missing)]


def enrich_frame(
    raw: pd.DataFrame, ip_db_path: str | None = None, services: dict | None = None, model_version: str | None = None
) -> pd.DataFrame:
    """Enrich a batch, column-wise: IP look-ups once per distinct address, services once per
    distinct AS domain, alignment once per distinct (results, From domain, mode), the model's
    features and scores as array operations. ``model_version``: the label the rows carry (the
    driver's, which is also what the enrichment ledger records; default this code's)."""
    frame = raw.reindex(columns=list(RAW_FIELDS)).copy()
    reader = reference.ip_reader(ip_db_path)
    services = services if services is not None else reference.service_map()
    frame["report_begin_ts"] = pd.to_datetime(frame["report_begin"], utc=True, errors="coerce", format="ISO8601")
    frame["report_end_ts"] = pd.to_datetime(frame["report_end"], utc=True, errors="coerce", format="ISO8601")
    frame[RESCUE] = _rescue_reasons(frame)
    ok = frame[RESCUE].isna()

    addresses = frame.loc[ok, "source_ip"].unique()
    infos = pd.DataFrame(
        [_ip_info(ip, reader) for ip in addresses],  # one lookup per distinct address
        index=pd.Index(addresses, dtype=object),
        columns=["country", "continent", "asn", "as_org", "as_domain"],
        dtype=object,
    )
    looked_up = infos.reindex(frame["source_ip"].to_numpy())
    for name in ("country", "continent", "asn", "as_org", "as_domain"):
        frame[name] = looked_up[name].to_numpy()

    def service_of(domain):
        found = services.get(str(domain).lower()) if domain is not None else None
        return found if found else (None, None)

    frame["service_name"], frame["service_type"] = _per_distinct([frame["as_domain"]], service_of, outputs=2)
    dkim_aligned, dkim_pass = _per_distinct(
        [frame["dkim_auth"], frame["header_from"], frame["policy_adkim"]],
        lambda a, h, m: (alignment.dkim_aligned(a, h, m), alignment.any_pass(a)),
        outputs=2,
        dtype=bool,
    )
    spf_aligned, spf_pass = _per_distinct(
        [frame["spf_auth"], frame["header_from"], frame["policy_aspf"]],
        lambda a, h, m: (alignment.spf_aligned(a, h, m), alignment.any_pass(a)),
        outputs=2,
        dtype=bool,
    )
    dmarc_pass = dkim_aligned | spf_aligned
    has_auth = (frame["dkim_auth"].notna() & (frame["dkim_auth"] != "[]")) | (
        frame["spf_auth"].notna() & (frame["spf_auth"] != "[]")
    )
    features = {
        "dmarc_pass": dmarc_pass,
        "dkim_aligned": dkim_aligned,
        "spf_aligned": spf_aligned,
        "dkim_pass": dkim_pass,
        "spf_pass": spf_pass,
        "has_auth_results": has_auth.to_numpy(dtype=bool),
        "service_type": frame["service_type"].to_numpy(dtype=object),
        "known_service": frame["service_name"].notna().to_numpy(dtype=bool),
    }
    frame["dkim_aligned"] = dkim_aligned
    frame["spf_aligned"] = spf_aligned
    frame["dmarc_pass"] = dmarc_pass
    frame["sender_category"] = model.categories(**features)
    frame["trust_score"] = model.trust_scores(**features)
    frame["model_version"] = model_version or model.MODEL_VERSION
    frame["day"] = frame["report_begin_ts"].dt.date
    frame["event_id"] = _event_ids(frame)
    frame["report_begin"] = frame["report_begin_ts"]
    frame["report_end"] = frame["report_end_ts"]
    return frame[OUTPUT_COLUMNS]


def enrich_batches(
    batches: Iterator[pd.DataFrame], ip_db_path: str | None = None, services: dict | None = None
) -> Iterator[pd.DataFrame]:
    """The mapInPandas entry point."""
    for batch in batches:
        yield enrich_frame(batch, ip_db_path, services)
