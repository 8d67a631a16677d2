"""The partitions of the assets, in one place."""

from dagster import DailyPartitionsDefinition, DynamicPartitionsDefinition

from pipeline import names

# Telemetry is partitioned by the report's day (UTC). Aggregate reports in the wild carry dates
# long before DMARC existed (see rfc9990-sample.xml: 1979), so the calendar starts in 1970; the
# partitions are virtual, so an empty past costs nothing. end_offset=1 admits today's reports.
telemetry_days = DailyPartitionsDefinition(start_date="1970-01-01", end_offset=1, fmt="%Y-%m-%d")

# One partition per enriched S3 object (pipeline.importer.partitions.partition_key).
enriched_objects = DynamicPartitionsDefinition(name=names.ENRICHED_OBJECTS)
