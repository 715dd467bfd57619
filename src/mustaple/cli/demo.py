"""`mustaple demo`: mustaple end to end on loopback, no setup."""

from __future__ import annotations

import asyncio

import click

__all__ = ["demo"]


@click.command("demo")
def demo() -> int:
    """Show mustaple end to end on loopback: no internet, no setup, under a minute."""
    from mustaple.front.demo import run_demo

    return asyncio.run(run_demo(click.echo))
