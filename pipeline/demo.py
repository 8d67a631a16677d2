"""``pipeline demo``: the whole flow on the local stack, through the same sensors and assets the
Dagster daemon runs (here ticked and executed in process, recorded in the local instance so the
UI of ``pipeline dev`` shows them afterwards):

generate reports -> collect (raw) -> raw sensor -> Spark enrichment (enriched) -> S3/SNS/SQS ->
import sensor -> importer runs (warehouse) -> verify.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.settings import Settings, pipeline_home


class Terminal:
    """Where the demo's story goes: a line per stage (``terminal(line)``) and, while a stage runs,
    a progress bar on the same line (``terminal.bar(stage, total)``), drawn only on a terminal."""

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def bar(self, stage: str, total: int | None = None, unit: str = "run") -> tqdm:
        return tqdm(
            total=total,
            desc=f"  {stage}",
            unit=unit,
            leave=False,  # the stage's own line replaces it
            file=self.stream,
            disable=not self.stream.isatty(),
        )


def _bar(echo: Callable[[str], None], stage: str, total: int | None = None, unit: str = "run") -> tqdm:
    maker = getattr(echo, "bar", None)
    return maker(stage, total, unit) if maker else tqdm(total=total, disable=True)


@contextlib.contextmanager
def logs_to_file(path: Path | None) -> Iterator[Terminal]:
    """Everything the stages print (Dagster's run logs, Spark's JVM and progress bars, migrations)
    goes to ``path``, at the file-descriptor level so that child processes' output goes there too;
    the function yielded prints to the terminal, which shows one line per stage. ``None``: no
    redirection (``pipeline demo -v``)."""
    if path is None:
        yield Terminal(sys.stdout)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield Terminal(terminal)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


@dataclass
class DemoResult:
    customers: list[str]
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, what happened)
    verify: dict[str, dict] = field(default_factory=dict)
    failed_runs: int = 0

    @property
    def ok(self) -> bool:
        return self.failed_runs == 0 and all(v["ok"] for v in self.verify.values())


def run_demo(
    settings: Settings,
    reports_dir: Path | None = None,
    customer_id: str | None = None,
    customers: int = 3,
    reports: int = 8,
    seed: int = 42,
    echo: Callable[[str], None] = print,
    maildir: Path | None = None,
) -> DemoResult:
    from pipeline.collector.collect import collect
    from pipeline.collector.generate import generate_reports
    from pipeline.collector.spool import Spool
    from pipeline.defs.raw.sensors import raw_telemetry_sensor
    from pipeline.importer.verify import verify
    from pipeline.local.inprocess import apply, drain_import_queue, local_instance, tick

    home = pipeline_home()
    instance = local_instance()

    def step(name: str, started: float, what: str) -> None:
        seconds = time.monotonic() - started
        result.steps.append((name, seconds, what))
        echo(f"  {name:9} {seconds:6.1f}s  {what}")

    started = time.monotonic()
    if maildir is not None:
        if not customer_id:
            raise ValueError("--maildir needs --customer: whose rua mailbox is this?")
        inputs = [(customer_id, maildir)]
        result = DemoResult([customer_id])
        step("mailbox", started, f"Maildir {maildir}")
    elif reports_dir is not None:
        if not customer_id:
            raise ValueError("--reports needs --customer: which customer do these reports belong to?")
        inputs = [(customer_id, reports_dir)]
        result = DemoResult([customer_id])
        step("reports", started, f"{reports_dir}")
    else:
        folder = home / "demo" / f"reports-seed{seed}"
        generated = generate_reports(folder, customers, reports, seed)
        inputs = sorted({(r.customer_id, folder / r.customer_id) for r in generated})
        result = DemoResult([cid for cid, _ in inputs])
        step("generate", started, f"{len(generated)} synthetic reports for {len(inputs)} customers in {folder}")

    started = time.monotonic()
    if maildir is not None:
        from pipeline.collector.maildir import collect_maildir

        mailbox = collect_maildir(maildir, customer_id, settings, Spool(home / "spool"))
        collected = [mailbox.collect]
        echo(f"  {'':9} {'':7} messages archived {len(mailbox.archived)}, moved to .Invalid {len(mailbox.invalid)}")
    else:
        collected = []
        with _bar(echo, "collect", len(inputs), "input") as bar:
            for cid, path in inputs:
                collected.append(collect([path], cid, settings, Spool(home / "spool")))
                bar.update(1)
    step(
        "collect",
        started,
        f"{sum(c.reports for c in collected)} reports, {sum(c.records for c in collected)} "
        f"records, {sum(c.messages for c in collected)} messages -> {sum(len(c.objects_written) for c in collected)}"
        f" new raw object(s), {sum(len(c.duplicates) for c in collected)} duplicate(s), "
        f"{sum(len(c.rejected) for c in collected)} rejected",
    )

    started = time.monotonic()
    cursor_file = home / "demo" / "raw_sensor.cursor"
    cursor_file.parent.mkdir(parents=True, exist_ok=True)
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    raw_tick = tick(instance, raw_telemetry_sensor, cursor)
    with _bar(echo, "enrich", len(getattr(raw_tick, "run_requests", None) or [])) as bar:
        runs = apply(instance, raw_tick, on_run=lambda _: bar.update(1))
    if getattr(raw_tick, "cursor", None):
        cursor_file.write_text(raw_tick.cursor)
    result.failed_runs += sum(not r.success for r in runs)
    step(
        "enrich",
        started,
        f"{len(runs)} enrichment run(s) over {len(raw_tick.asset_events)} day(s) of new raw data "
        "(Spark from PIPELINE_ENRICH_LOCAL_BYTES of raw objects, in the run's process below)",
    )

    started = time.monotonic()
    with _bar(echo, "import") as bar:  # the runs the queue's objects need: known as they come
        import_runs = drain_import_queue(instance, on_run=lambda _: bar.update(1))
    result.failed_runs += sum(not r.success for r in import_runs)
    step("import", started, f"{len(import_runs)} importer run(s) drained the queue")

    started = time.monotonic()
    from dagster import materialize

    from pipeline.defs.reports.assets import customer_alerts, warehouse_projections
    from pipeline.defs.resources import resource_defs

    # what the automation sensor runs after imports under `make dev` (their eager conditions)
    projected = materialize([warehouse_projections, customer_alerts], resources=resource_defs(), instance=instance)
    result.failed_runs += not projected.success
    step("project", started, "daily domain compliance and source summaries for the web application; alerts")

    started = time.monotonic()
    with _bar(echo, "verify", len(result.customers), "customer") as bar:
        for cid in result.customers:
            result.verify[cid] = verify(settings, cid)
            bar.update(1)
    step("verify", started, "S3 against the warehouse")
    return result


def headlines(settings: Settings, customers: list[str]) -> list[str]:
    """The customers' headline figures as the web application shows them, and how to open it."""
    from collections import Counter

    from pipeline.web.dmarc import readiness, services
    from pipeline.web.queries import Warehouse, overview
    from pipeline.web.tenants import issue_token

    if not customers:
        return []
    lines = []
    warehouse = Warehouse(settings.database_url, pool_size=1)
    try:
        for cid in customers:
            with warehouse.tenant(cid) as conn:
                o = overview(conn, cid)
                kinds = Counter(s["classification"] for s in services(conn, cid))
                ready = readiness(conn, cid)
            rate = f"{100 * o['dmarc_pass_rate']:.1f}%" if o["dmarc_pass_rate"] is not None else "-"
            lines.append(
                f"  {cid}: {o['reports']} reports, {o['messages']} messages, DMARC pass {rate}, "
                f"{len(o['domains'])} domain(s), {o['sources']} sending sources"
            )
            steps = ", ".join(
                f"{r['domain']} p={r['current_policy']} -> p={r['next_policy']} {'ready' if r['ready'] else 'not yet'}"
                if r["next_policy"]
                else f"{r['domain']} at p={r['current_policy']}"
                for r in ready[:3]
            )
            lines.append(
                f"    services: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items())) or 'none'}; "
                f"{o['verdict_disagreements']} messages where receivers and alignment disagree; "
                f"readiness: {steps or '-'}"
            )
    finally:
        warehouse.close()
    token = issue_token(settings.database_url, customers[0])
    lines.append(
        f"Web application: `pipeline web`, then http://127.0.0.1:8080/ and sign in as {customers[0]} "
        f"with the token {token}"
    )
    return lines
