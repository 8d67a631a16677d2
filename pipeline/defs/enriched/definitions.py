from dagster import Definitions
from dagster_pyspark import PySparkResource

from pipeline.defs.enriched.assets import enriched_telemetry
from pipeline.enrich.spark import spark_conf

defs = Definitions(
    assets=[enriched_telemetry],
    # local[*] by default; PIPELINE_SPARK_MASTER names a cluster (spark://…, yarn, k8s://…): pipeline/config.py.
    resources={"pyspark": PySparkResource(spark_config=spark_conf())},
)
