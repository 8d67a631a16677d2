"""Projections as Dagster assets: the web application's read models, downstream of the events.

Materializing recomputes the (customer, day) slices that imports, supersessions and tombstones
touched since the last time (``pipeline.warehouse.projections``); eager automation does it after
each import. ``pipeline projections rebuild`` recomputes everything.
"""

from dagster import AssetKey, AssetSpec, AutomationCondition, MaterializeResult, asset, multi_asset

from pipeline import names
from pipeline.defs.metadata import ALERT_COLUMNS, DOMAIN_COLUMNS, SOURCE_COLUMNS
from pipeline.defs.resources import WarehouseResource
from pipeline.warehouse.projections import refresh

EVENTS = AssetKey(names.TELEMETRY_EVENTS)
DOMAINS = AssetKey(names.DAILY_DOMAIN_COMPLIANCE)
SOURCES = AssetKey(names.DAILY_SOURCE_SUMMARY)


@multi_asset(
    specs=[
        AssetSpec(
            DOMAINS,
            deps=[EVENTS],
            description="Per customer, day and policy domain: reports, messages, SPF / DKIM / DMARC pass and "
            "fail, dispositions. Follows supersession and tombstones.",
            automation_condition=AutomationCondition.eager(),
            group_name="warehouse",
            metadata={"dagster/column_schema": DOMAIN_COLUMNS, "dagster/table_name": names.DAILY_DOMAIN_COMPLIANCE},
        ),
        AssetSpec(
            SOURCES,
            deps=[EVENTS],
            description="Per customer, day and sending IP: ASN, organisation, country, sending service, "
            "category, trust score, volume and DMARC pass.",
            automation_condition=AutomationCondition.eager(),
            group_name="warehouse",
            metadata={"dagster/column_schema": SOURCE_COLUMNS, "dagster/table_name": names.DAILY_SOURCE_SUMMARY},
        ),
    ],
    can_subset=False,
)
def warehouse_projections(context, warehouse: WarehouseResource):
    result = refresh(warehouse.database_url())
    context.log.info(
        f"projections refreshed slices={result.slices} domain_rows={result.domain_rows} "
        f"source_rows={result.source_rows} sources_touched={result.sources_touched} "
        f"sources_recomputed={result.sources_recomputed}"
    )
    yield MaterializeResult(
        asset_key=DOMAINS, metadata={"slices_refreshed": result.slices, "rows_written": result.domain_rows}
    )
    yield MaterializeResult(
        asset_key=SOURCES,
        metadata={
            "slices_refreshed": result.slices,
            "rows_written": result.source_rows,
            # the all-days source rows the slices touched, and those read again from their days
            "sources_touched": result.sources_touched,
            "sources_recomputed": result.sources_recomputed,
        },
    )


@asset(
    key=AssetKey("customer_alerts"),
    deps=[DOMAINS, SOURCES],
    description="Alerts per customer (a new unauthorized source, the pass rate below a threshold, reports "
    "stopped, a policy change), each fired once per occurrence when the projections refresh, and POSTed "
    "signed to the customer's webhook.",
    automation_condition=AutomationCondition.eager(),
    group_name="warehouse",
    metadata={"dagster/column_schema": ALERT_COLUMNS, "dagster/table_name": "alerts"},
)
def customer_alerts(context, warehouse: WarehouseResource) -> MaterializeResult:
    from pipeline.web import alerts

    url = warehouse.database_url()
    fired = alerts.evaluate(url)
    delivery = alerts.deliver(url)
    context.log.info(f"alerts fired={len(fired)} delivered={delivery['delivered']} failed={delivery['failed']}")
    return MaterializeResult(
        metadata={
            "alerts_fired": len(fired),
            "webhooks_delivered": delivery["delivered"],
            "webhooks_failed": delivery["failed"],
        }
    )
