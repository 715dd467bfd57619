"""`mustaple init`: write a mustaple.toml for the certificates the servers serve, print (or,
with --apply, make and check) the lines to add to the servers' configuration."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from mustaple.adapters.files import write_atomic
from mustaple.core.errors import InputError
from mustaple.front.init import (
    CHECKERS,
    DEFAULT_CONFS,
    Edit,
    Plan,
    apply_edits,
    make_edits,
    make_plan,
    print_edits,
    print_table,
    read_confs,
    render_toml,
)

__all__ = ["init_command"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _conf_option(server: str) -> Callable[[_F], _F]:
    return click.option(
        f"--{server}-conf",
        type=click.Path(path_type=Path, dir_okay=False, allow_dash=server == "nginx"),
        help=f"{server}'s main configuration file (default: {DEFAULT_CONFS[server]} if there)"
        + (", or `nginx -T` output (saved, or - for standard input)" if server == "nginx" else ""),
    )


@click.command("init")
@_conf_option("nginx")
@_conf_option("haproxy")
@_conf_option("apache")
@_conf_option("lighttpd")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the configuration here (default: print it).")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite the --out file if it exists.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/var/lib/mustaple"),
    show_default=True,
    help="The keeper's state_dir; staple files go in its staples/.",
)
@click.option("--apply", is_flag=True, help="Also add the lines to the servers' files.")
def init_command(
    *,
    nginx_conf: Path | None,
    haproxy_conf: Path | None,
    apache_conf: Path | None,
    lighttpd_conf: Path | None,
    out: Path | None,
    force: bool,
    state_dir: Path,
    apply: bool,
) -> int:
    """Write a mustaple.toml for the certificates your servers serve, and say what to add to
    their configuration.

    Exit codes: 0 done; 1 nothing to staple, or --apply was refused by a server's own checker
    (its files were put back as they were); 2 bad input.
    """
    if out is not None and out.exists() and not force:
        raise InputError(f"{out}: exists; give --force to overwrite it, or another --out")
    given = {"nginx": nginx_conf, "haproxy": haproxy_conf, "apache": apache_conf,
             "lighttpd": lighttpd_conf}  # fmt: skip
    plan = make_plan(read_confs(given), state_dir.absolute())
    print_table(plan, Console(width=None if sys.stdout.isatty() else 160))
    if not any(found.usable for found in plan.found):
        read = ", ".join(str(conf.main) for conf in plan.confs)
        why = (
            f"none of the {len(plan.found)} certificates served in {read} can be: each needs "
            "an OCSP URL and its issuer (the table says what each lacks)"
            if plan.found
            else f"no certificate is served in {read}"
        )
        click.echo(f"nothing to staple: {why}")
        return 1
    text = render_toml(plan)
    if out is None:
        click.echo("\n" + text)
    else:
        _write_config(out, text)
        click.echo(f"\nwrote {out}; check it with: mustaple run --check-config --config {out}")
    edits, advice = make_edits(plan)
    if not apply:
        print_edits(edits, advice, click.echo)
        return 0
    return _apply(plan, edits, advice)


def _write_config(out: Path, text: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text.encode(), mode=0o640)
    except OSError as exc:
        raise InputError(f"{out}: cannot write the configuration ({exc.strerror})") from None


def _apply(plan: Plan, edits: Sequence[Edit], advice: Sequence[str]) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    failed = stapling_file_missing = False
    for conf in plan.confs:
        mine = [e for e in edits if e.server == conf.server]
        if not mine:
            continue
        if conf.server not in CHECKERS:
            print_edits(mine, [], click.echo)
            click.echo(f"{conf.server}: not applied (no checker to trust): add the lines above")
            continue
        backups = plan.state_dir / "backups" / stamp / conf.server
        ok, said = apply_edits(conf.server, conf.main, mine, backups)
        click.echo(said)
        failed = failed or not ok
        stapling_file_missing |= not ok and str(plan.state_dir / "staples") in said
    for line in advice:
        click.echo(line)
    if failed and stapling_file_missing:
        click.echo(
            "nginx refuses a missing ssl_stapling_file: run `mustaple prime --config FILE "
            "--all` first, then init --apply --force again (--force: the configuration it "
            "writes is there already)"
        )
    applied = [c.server for c in plan.confs if c.server in CHECKERS and any(
        e.server == c.server for e in edits)]  # fmt: skip
    if applied and not failed:
        click.echo(
            f"applied, not loaded: reload {' and '.join(dict.fromkeys(applied))} (after "
            "`mustaple prime --config FILE --all`) for the servers to staple"
        )
    return 1 if failed else 0
