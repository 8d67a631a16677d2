"""The partitions of the assets, in one place."""

from dagster import DailyPartitionsDefinition, DynamicPartitionsDefinition

from pipeline import config, names

# Telemetry is partitioned by the report's day (UTC), from PIPELINE_FIRST_DAY (default 2012-01-01,
# the year DMARC was published: a fresh deployment shows 15 years of days, not 56). The collector
# refuses a report that begins before it, naming the knob (rfc9990-sample.xml is dated 1979), so
# no raw object falls outside the calendar. end_offset=1 admits today's reports.
FIRST_DAY = config.get("PIPELINE_FIRST_DAY")
telemetry_days = DailyPartitionsDefinition(start_date=FIRST_DAY.isoformat(), end_offset=1, fmt="%Y-%m-%d")

# One partition per enriched S3 object (pipeline.importer.partitions.partition_key).
enriched_objects = DynamicPartitionsDefinition(name=names.ENRICHED_OBJECTS)
