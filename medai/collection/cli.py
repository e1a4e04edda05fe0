"""Commands of the collection part: ``medai campaign ...`` (one function per command)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from medai.collection.campaign import CampaignDefinition
    from medai.collection.campaign_setup import InitResult
    from medai.errors import MedaiError

__all__ = ["campaign_app", "register"]

campaign_app = typer.Typer(
    name="campaign",
    help="Define and set up the collection campaign (sites, targets, de-identification).",
    no_args_is_help=True,
)

# Exit status for a problem the user can fix (bad file, missing key): as click uses for usage.
EXIT_USER_ERROR = 2


def register(app: typer.Typer) -> None:
    """Add the collection sub-apps (``campaign``) to the root ``medai`` app."""
    app.add_typer(campaign_app, name="campaign")


def _fail(error: MedaiError, hint: str | None = None) -> typer.Exit:
    """Print ``error`` in red on stderr (with what to do next) and return the exit to raise."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True)
    # Text, not markup: messages hold field paths like "sites[1]" that rich would eat.
    console.print(Text(f"error: {error}", style="red"), soft_wrap=True)
    if hint:
        console.print(Text(hint), soft_wrap=True)
    return typer.Exit(EXIT_USER_ERROR)


@campaign_app.command("init")
def init_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="Campaign definition (TOML), e.g. collection/example-campaign.toml.",
        ),
    ],
) -> None:
    """Set up the campaign: migrate the catalog, create the key, record the sites.

    Safe to run again after editing the file: sites are updated, the key is kept.
    """
    from rich.console import Console

    from medai.collection.campaign import load_campaign
    from medai.collection.campaign_setup import init_campaign
    from medai.config import get_settings
    from medai.errors import CampaignError, MedaiError

    try:
        definition = load_campaign(file)
        result = init_campaign(definition, get_settings())
    except CampaignError as exc:
        raise _fail(exc, f"Fix {file} and run `medai campaign init {file}` again.") from None
    except MedaiError as exc:
        raise _fail(exc) from None
    _print_init_summary(Console(), definition, result)


def _print_init_summary(
    console: Console, definition: CampaignDefinition, result: InitResult
) -> None:
    from rich.table import Table
    from rich.text import Text

    verb = "unchanged"
    if result.campaign_created or result.campaign_updated:
        verb = "created" if result.campaign_created else "updated"
    console.print(
        Text.assemble(
            ("Campaign ", "bold"),
            (definition.name, "bold cyan"),
            f" ({verb}): {definition.start_date.isoformat()} to {definition.last_day.isoformat()}"
            f", {definition.length_days} days",
        )
    )
    console.print(Text(f"Catalog: {result.database}"), soft_wrap=True)

    status = dict.fromkeys(result.sites_created, "new") | dict.fromkeys(
        result.sites_updated, "updated"
    )
    table = Table(title="Sites", show_lines=False)
    for column in ("Site", "Name", "AE titles", "Targets", "Change"):
        table.add_column(column)
    for site in definition.sites:
        targets = "\n".join(
            " ".join(v for v in (t.modality, t.body_part, t.finding) if v)
            + f": {t.studies} studies"
            for t in site.targets
        )
        table.add_row(
            site.id, site.name, ", ".join(site.ae_titles), targets, status.get(site.id, "unchanged")
        )
    console.print(table)
    if result.sites_not_in_definition:
        console.print(
            Text(
                "In the catalog but no longer in the file (kept): "
                + ", ".join(result.sites_not_in_definition),
                style="yellow",
            )
        )

    key_state = "created" if result.key_created else "already there: reused, not overwritten"
    console.print(Text(f"Pseudonymization key: {result.key_file} ({key_state})"), soft_wrap=True)
    console.print(
        Text(
            "Back up the key file now, and keep the backup apart from the catalog backups: "
            "without it, data sent later gets different pseudonyms; whoever holds both the key "
            "and the catalog can link pseudonyms back to known patient IDs.",
            style="bold yellow",
        )
    )
