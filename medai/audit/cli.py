"""``medai audit verify|anchor``: check the hash chain of the audit log, print its head to keep."""

from __future__ import annotations

from typing import Annotated

import typer

from medai.cli_support import EXIT_PROBLEM, JsonFlag

__all__ = ["audit_app", "register"]

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_app.command("verify")
def verify_command(
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            metavar="SEQ:HASH",
            help="A head kept earlier (`medai audit anchor`, or the campaign export's "
            "audit_head): also detect records cut off after it or a chain rewritten up to it.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Recompute the audit log's hash chain; exit 1 and name the first bad record if edited.

    Without --anchor the newest records could be deleted unseen: pass a head kept elsewhere.
    """
    from rich.text import Text

    from medai.audit import parse_anchor, verify_against_anchor, verify_audit_chain
    from medai.cli_support import (
        catalog_session,
        console,
        err_console,
        fail,
        print_json,
        require_campaign,
    )
    from medai.errors import BadAuditAnchor

    try:
        anchored = None if anchor is None else parse_anchor(anchor)
    except BadAuditAnchor as exc:
        raise fail(exc, "Copy the anchor exactly, e.g. 1234:9f86d081…(64 hex digits).") from None
    # The chain may start before the campaign (API keys are audited): a schema is enough.
    require_campaign(campaign=False)
    with catalog_session() as session:
        if anchored is None:
            report = verify_audit_chain(session)
        else:
            report = verify_against_anchor(session, anchored)
    if as_json:
        print_json(report)
    elif report.ok:
        suffix = f", reaching anchor {anchored.seq}" if anchored else ""
        console().print(
            Text.assemble(
                ("OK", "bold green"), f": {report.records} audit records, chain intact{suffix}"
            )
        )
    else:
        err_console().print(
            Text.assemble(
                ("audit chain broken", "bold red"),
                f" at record {report.first_bad_seq}: {report.problem}",
            )
        )
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEM)


@audit_app.command("anchor")
def anchor_command(as_json: JsonFlag = False) -> None:
    """Print the chain's head as SEQ:HASH: keep it elsewhere, check later with verify --anchor.

    The anchoring is recorded after the printed head (`audit.anchored`, naming it), so
    `medai doctor` can tell how long ago the head was last kept.
    """
    from medai.audit import actors, append_audit, audit_head, audited_transaction
    from medai.audit.anchor import ANCHORED_ACTION
    from medai.cli_support import catalog_session, print_json, require_campaign

    require_campaign(campaign=False)
    with catalog_session(write=True) as session, audited_transaction(session) as audited:
        head = audit_head(audited)
        append_audit(
            audited,
            actor=actors.operator(),
            action=ANCHORED_ACTION,
            subject=str(head.seq),
            details={"anchor": str(head)},
        )
    if as_json:
        print_json({"seq": head.seq, "hash": head.hash, "anchor": str(head)})
    else:
        typer.echo(str(head))


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the root app."""
    app.add_typer(audit_app, name="audit")
