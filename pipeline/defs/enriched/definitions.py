from dagster import Definitions
from dagster_pyspark import LazyPySparkResource

from pipeline.defs.enriched.assets import enriched_telemetry
from pipeline.defs.metadata import with_code_references
from pipeline.enrich.spark import spark_conf

defs = Definitions(
    assets=with_code_references([enriched_telemetry]),  # the UI links each asset to its code
    # local[*] by default; PIPELINE_SPARK_MASTER names a cluster (spark://…, yarn, k8s://…): pipeline/config.py.
    # Lazy: the session (about 10 s to start here) is made only for a run too big to enrich in its
    # own process (PIPELINE_ENRICH_LOCAL_BYTES), not at every run's resource initialization.
    resources={"pyspark": LazyPySparkResource(spark_config=spark_conf())},
)
