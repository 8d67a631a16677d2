"""The DMARC telemetry pipeline: collector, Spark enrichment, SQS-driven importer, on Dagster."""

from setuptools import find_packages, setup

# The Dagster family is pinned together: unpinned, pip backtracks dagster-aws to 0.11.x (2020).
DAGSTER = "1.13.27"
DAGSTER_LIBS = "0.29.27"

setup(
    name="dmarc-pipeline",
    version="0.1.0",
    description="Event-sourced DMARC telemetry pipeline: S3 -> SNS -> SQS -> Dagster -> PostgreSQL",
    python_requires=">=3.11",
    packages=find_packages(exclude=["pipeline_tests", "pipeline_tests.*"]),
    package_data={"pipeline": ["py.typed", "warehouse/migrations/*.sql", "web/templates/*.html"]},
    include_package_data=True,
    install_requires=[
        f"dagster=={DAGSTER}",
        f"dagster-webserver=={DAGSTER}",
        f"dagster-graphql=={DAGSTER}",
        f"dagster-aws=={DAGSTER_LIBS}",
        f"dagster-pyspark=={DAGSTER_LIBS}",
        f"dagster-postgres=={DAGSTER_LIBS}",
        "boto3>=1.35,<2",
        "pyspark>=4.0,<4.4",
        "pyarrow>=15",
        "pandas>=2.1,<3",  # pyspark 4.x does not support pandas 3 yet
        "psycopg[binary,pool]>=3.2,<4",
        "starlette>=0.40",
        "jinja2>=3.1",
        "uvicorn>=0.30",
        "itsdangerous>=2.1",
        "python-multipart>=0.0.9",
        "parsedmarc>=9,<12",
        "publicsuffixlist>=1.0",  # the collector's reader: parsedmarc's base domains, without importing parsedmarc
        "maxminddb>=2.6",
        "tqdm>=4.66",
    ],
    extras_require={
        # The local stack and the benchmarks: never in the production image (deploy/dagster/Containerfile).
        "local": [
            "moto[server]>=5.2,<6",  # S3, SNS, SQS, ECS, Auto Scaling over HTTP
            "pgserver>=0.1.4",  # the embedded PostgreSQL where none runs
            "matplotlib>=3.8",  # the benchmarks' and the scaling simulator's plots
            "psutil>=5.9",  # local worker processes, the benchmarks' RSS sampling
        ],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "import-linter>=2.1",  # the import layers (.importlinter), checked by make test
            "cfn-lint>=1.0",
            "aiosmtpd>=1.4",  # a real local SMTP server for the digest tests
            "hypothesis>=6.100",
            "playwright>=1.45",  # drives Debian's chromium (scripts/ensure-chromium.sh), no browser download
        ],
    },
    entry_points={"console_scripts": ["pipeline=pipeline.cli:main"]},
)
