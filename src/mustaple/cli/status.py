"""`mustaple status`: every certificate's staple from the shared state (or the fleet's view)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mustaple.cli.options import config_option
from mustaple.core.clock import utc_now
from mustaple.core.report import ExitCode

__all__ = ["status"]


@click.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--fleet", "fleet", is_flag=True, help="Show the fleet's view, from Redis.")
def status(*, config_path: str, as_json: bool, fleet: bool) -> int:
    """Show every certificate's staple: status, times, next refresh, last error. With
    --fleet: every member, and who fetched each certificate's staple, when."""
    from mustaple.front.status import (
        fleet_view,
        print_fleet_tables,
        print_status_table,
        status_rows,
    )
    from mustaple.keeper.daemon import check_config as check_config_file

    config = check_config_file(Path(config_path))  # the sinks too: the same checks as run
    if fleet:
        view: Any = fleet_view(config, utc_now())
        show: Callable[[Any], None] = print_fleet_tables
    else:
        view, show = status_rows(config, utc_now()), print_status_table
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        show(view)
    return ExitCode.GOOD
