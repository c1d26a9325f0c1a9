"""The ``onnxsight`` command: one typer app, user errors as one red line and exit code 1."""

from __future__ import annotations

from typing import Annotated

import typer

from onnxsight import __version__
from onnxsight.cli import (
    attribution, batch, convert, dataset_views, demo, gradients, layers, maximize, models, report, serve,
)
from onnxsight.cli.options import err
from onnxsight.errors import OnnxsightError


class _ErrorBoundary(typer.core.TyperGroup):
    """Turns user-fixable errors into one line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxsightError as error:
            err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    name="onnxsight",
    cls=_ErrorBoundary,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Activations, gradients and attribution maps for any ONNX classifier, without a training framework.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnxsight {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """onnxsight: look inside an ONNX classifier."""


app.command("convert")(convert.convert)
app.command("inspect")(models.inspect)
app.command("predict")(models.predict)
app.command("activations")(layers.activations)
app.command("filters")(layers.filters)
app.command("augment")(gradients.augment)
app.command("gradcheck")(gradients.gradcheck)
app.command("saliency")(attribution.saliency)
app.command("smoothgrad")(attribution.smoothgrad)
app.command("ig")(attribution.ig)
app.command("gradcam")(attribution.gradcam)
app.command("occlusion")(attribution.occlusion)
app.command("class-saliency")(dataset_views.class_saliency)
app.command("top-k")(dataset_views.top_k)
app.command("embed")(dataset_views.embed)
app.command("batch")(batch.batch)
app.command("maximize")(maximize.maximize)
app.command("demo")(demo.demo)
app.command("report")(report.report)
app.command("export")(serve.export)
app.command("serve")(serve.serve)


def main() -> None:
    app()
