"""The collector stage: `pipeline collect` and `pipeline generate-reports`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.cli.app import cli
from pipeline.settings import load_settings, pipeline_home


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--customer", "customer_id", help="The customer these reports belong to.")
@click.option("--flush", "flush_only", is_flag=True, help="Only upload what the spool holds.")
@click.option(
    "--spool",
    "spool_dir",
    type=click.Path(path_type=Path),
    help="Spool folder (default: $PIPELINE_HOME/spool).",
)
@click.option(
    "--maildir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Collect the messages of this Maildir (the rua mailbox); each is then moved to .Archive, "
    "or to .Invalid when it is not a readable report.",
)
@click.option(
    "--imap",
    "use_imap",
    is_flag=True,
    help="Collect the rua mailbox over IMAP (PIPELINE_IMAP_HOST, _PORT, _USER, _PASSWORD, _FOLDER; TLS by "
    "default); each message is then moved to Archive, or to Invalid when it is not a readable report.",
)
@click.option(
    "--watch",
    "watch_s",
    type=click.FloatRange(min=0.1),
    help="With --maildir or --imap: run as a service, collecting every this many seconds until SIGTERM.",
)
@click.option("--status", "show_status", is_flag=True, help="What the collector service did last (its status file).")
@click.option("--max-file-mb", default=100.0, show_default=True, help="Largest report file accepted.")
@click.option(
    "--max-records",
    default=5_000_000,
    show_default=True,
    help="Most records in one report: a policy (the reader streams; memory does not grow with a report).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def collect(
    paths,
    customer_id,
    flush_only,
    spool_dir,
    maildir,
    use_imap,
    watch_s,
    show_status,
    max_file_mb,
    max_records,
    as_json,
) -> None:
    """Collect DMARC aggregate reports (XML, .xml.gz, .zip, .eml, or a Maildir) into raw telemetry in S3.

    Exit status: 0 all collected; 1 some inputs were rejected; 3 some objects wait in the spool
    (S3 unreachable; run again or `pipeline collect --flush`).
    """
    from pipeline.collector import collect as collector
    from pipeline.collector.inputs import Limits
    from pipeline.collector.spool import Spool

    if show_status:
        from pipeline.collector.service import read_status, status_path

        status = read_status()
        if status is None:
            raise click.ClickException(f"no collector status at {status_path()}: the service has not run here")
        click.echo(json.dumps(status, indent=2) if as_json else "\n".join(f"{k:18} {v}" for k, v in status.items()))
        return
    if watch_s and not (maildir or use_imap):
        raise click.UsageError("--watch needs --maildir or --imap (a folder of files would be read again every time)")
    settings = load_settings()
    spool = Spool(spool_dir or pipeline_home() / "spool")
    progress = sys.stderr.isatty() and not as_json
    if flush_only:
        summary = collector.CollectSummary()
        s3 = collector.client(settings, "s3", collector.COLLECTOR_CLIENT)
        with spool.locked():
            collector.flush(spool, collector.Uploader(s3, settings.raw_bucket), summary, progress)
    elif use_imap:
        from pipeline.collector.imap import ImapMailbox, collect_imap

        if not customer_id or paths or maildir:
            raise click.UsageError("give --customer ID with --imap (and no files, no --maildir)")
        limits = Limits(max_file_bytes=int(max_file_mb * 1024 * 1024), max_records=max_records)
        if watch_s:
            from pipeline.collector.service import watch_imap

            status = watch_imap(ImapMailbox.from_config(), customer_id, settings, spool, watch_s, limits)
            if as_json:
                click.echo(json.dumps(status.__dict__, indent=2))
            sys.exit(0)
        mailbox = collect_imap(ImapMailbox.from_config(), customer_id, settings, spool, limits, progress)
        if as_json:
            click.echo(json.dumps(mailbox.to_dict(), indent=2))
        else:
            _print_collect_summary(mailbox.collect, spool)
            click.echo(f"messages archived {len(mailbox.archived)}  moved to Invalid {len(mailbox.invalid)}")
        sys.exit(mailbox.exit_code)
    elif maildir:
        from pipeline.collector.inputs import Rejected
        from pipeline.collector.maildir import collect_maildir

        if not customer_id or paths:
            raise click.UsageError("give --customer ID with --maildir (and no files)")
        limits = Limits(max_file_bytes=int(max_file_mb * 1024 * 1024), max_records=max_records)
        if watch_s:
            from pipeline.collector.service import watch_maildir

            status = watch_maildir(maildir, customer_id, settings, spool, watch_s, limits)
            if as_json:
                click.echo(json.dumps(status.__dict__, indent=2))
            sys.exit(0)
        try:
            mailbox = collect_maildir(maildir, customer_id, settings, spool, limits, progress)
        except Rejected as exc:
            raise click.UsageError(str(exc)) from None
        if as_json:
            click.echo(json.dumps(mailbox.to_dict(), indent=2))
        else:
            _print_collect_summary(mailbox.collect, spool)
            click.echo(f"messages archived {len(mailbox.archived)}  moved to .Invalid {len(mailbox.invalid)}")
        sys.exit(mailbox.exit_code)
    else:
        if not customer_id or not paths:
            raise click.UsageError("give --customer ID and at least one file or folder, or --maildir (or --flush)")
        limits = Limits(max_file_bytes=int(max_file_mb * 1024 * 1024), max_records=max_records)
        summary = collector.collect(paths, customer_id, settings, spool, limits, progress)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_collect_summary(summary, spool)
    sys.exit(summary.exit_code)


def _print_collect_summary(summary, spool) -> None:
    click.echo(
        f"files {summary.files}  reports {summary.reports}  records {summary.records}  messages {summary.messages}"
    )
    click.echo(
        f"objects written {len(summary.objects_written)}  replaced (better copy) "
        f"{len(summary.objects_replaced)}  already in S3 {len(summary.already_in_s3)}"
    )
    for dup in summary.duplicates:
        click.echo(f"  duplicate  {dup}")
    for rej in summary.rejected:
        click.secho(f"  rejected   {rej['reason']}", fg="yellow")
    for err in summary.upload_errors:
        click.secho(f"  upload     {err}", fg="red")
    if summary.pending_in_spool:
        click.secho(
            f"{summary.pending_in_spool} object(s) wait in {spool.root}: run "
            "`pipeline collect --flush` when S3 is reachable",
            fg="red",
        )


@cli.command("generate-reports")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--customers", default=3, show_default=True, help="How many customers (one domain each).")
@click.option("--reports", default=8, show_default=True, help="Reports per customer.")
@click.option("--seed", default=0, show_default=True, help="The same seed writes the same reports.")
@click.option("--start-date", default=None, help="Day of the first reports (default: the last ones are of yesterday).")
def generate_reports_command(out_dir: Path, customers: int, reports: int, seed: int, start_date: str) -> None:
    """Write synthetic RFC 7489 aggregate reports (XML, .xml.gz, .zip) for demos and load tests."""
    import datetime as dt

    from pipeline.collector.generate import generate_reports

    start = dt.date.fromisoformat(start_date) if start_date else None
    written = generate_reports(out_dir, customers, reports, seed, start)
    click.echo(
        f"{len(written)} reports, {sum(len(r.records) for r in written)} records, "
        f"{sum(r.messages for r in written)} messages in {out_dir} (manifest.json lists them)"
    )
