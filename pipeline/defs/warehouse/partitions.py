from dagster import DynamicPartitionsDefinition

# One partition per enriched S3 object (pipeline.importer.partitions.partition_key).
enriched_objects = DynamicPartitionsDefinition(name="enriched_objects")
