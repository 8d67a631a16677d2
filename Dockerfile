# The one image of every production task (deploy/cloudformation/compute.yaml): Dagster daemon,
# webserver, code location, run tasks and `pipeline importer` workers.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    PIPELINE_ENV=prod \
    DAGSTER_HOME=/opt/dagster/home \
    PYTHONUNBUFFERED=1
WORKDIR /opt/pipeline
COPY setup.py README.md ./
COPY pipeline ./pipeline
RUN pip install --no-cache-dir . && useradd --system --uid 10001 pipeline
COPY deploy/dagster/dagster.yaml /opt/dagster/home/dagster.yaml
COPY deploy/dagster/workspace.yaml /opt/dagster/workspace.yaml
USER pipeline
CMD ["pipeline", "--help"]
