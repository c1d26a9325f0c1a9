"""The ``onnxsight`` command: one typer app, user errors as one red line and exit code 1."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from onnxsight import __version__
from onnxsight.cli import (
    attribution, batch, convert, dataset_views, deeplift, demo, evaluate, gradients, layer_attribution, layers, maximize, models,
    perturbation, relevance, report, serve,
)
from onnxsight.cli.options import err
from onnxsight.errors import OnnxsightError


class _ErrorBoundary(typer.core.TyperGroup):
    """Turns user-fixable errors, and the file system's (disk full, read-only, not a folder), into one
    line on stderr and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxsightError as error:
            message = str(error)
        except OSError as error:
            message = _os_message(error)
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _os_message(error: OSError) -> str:
    """'PATH: [Errno N] reason', the path first (Python puts it last, quoted)."""
    if error.errno is None or error.filename is None:
        return str(error)
    path = f"{error.filename} -> {error.filename2}" if error.filename2 is not None else str(error.filename)
    return f"{path}: [Errno {error.errno}] {error.strerror}"


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
app.command("deeplift")(deeplift.deeplift)
app.command("deepliftshap")(deeplift.deepliftshap)
app.command("rollout")(attribution.rollout)
app.command("gradcam")(attribution.gradcam)
app.command("occlusion")(attribution.occlusion)
app.command("gradientshap")(layer_attribution.gradientshap)
app.command("layer-ig")(layer_attribution.layer_ig)
app.command("conductance")(layer_attribution.conductance)
app.command("neuron")(layer_attribution.neuron)
app.command("ablation")(perturbation.ablation)
app.command("shapley")(perturbation.shapley)
app.command("kernelshap")(perturbation.kernelshap)
app.command("lime")(perturbation.lime)
app.command("rise")(perturbation.rise)
app.command("lrp")(relevance.lrp)
app.command("evaluate")(evaluate.evaluate)
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
