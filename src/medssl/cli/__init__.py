"""The ``medssl`` command line: a thin layer over the Python API.

Every sub-command parses its options, builds a pydantic config and calls one documented function.
User errors (:class:`medssl.errors.MedsslInputError`) are printed as one line and exit with code 2.
"""

from __future__ import annotations

import sys

import typer

from medssl import __version__
from medssl.cli import data as data_cli
from medssl.cli import demo as demo_cli
from medssl.cli import finetune as finetune_cli
from medssl.cli import finetune_detect
from medssl.cli import localize as localize_cli
from medssl.cli import presets as presets_cli
from medssl.cli import pretrain as pretrain_cli
from medssl.cli import report as report_cli
from medssl.cli import semi as semi_cli
from medssl.errors import EXIT_USER_ERROR, MedsslInputError

app = typer.Typer(
    name="medssl",
    help="Learning from medical scans when labels are scarce: text-guided masked image modeling "
    "(Mask What Matters) and semi-supervised 3D segmentation (CORN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(localize_cli.app, name="localize")
app.add_typer(pretrain_cli.app, name="pretrain")
finetune_cli.app.command("detect")(finetune_detect.detect)
app.add_typer(finetune_cli.app, name="finetune")
app.add_typer(semi_cli.app, name="semi")
app.command("demo")(demo_cli.demo)
app.command("report")(report_cli.report)
app.command("presets")(presets_cli.presets)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """medssl command line."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; turns user errors into one line on stderr and exit code 2."""
    try:
        rv = app(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:  # typer.Exit(code) becomes a return value in this mode
            sys.exit(rv)
    except MedsslInputError as err:
        typer.echo(f"medssl: error: {err}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as ex:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(ex, click.exceptions.ClickException):
            ex.show()
            sys.exit(EXIT_USER_ERROR)
        raise
