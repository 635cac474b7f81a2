"""`tunelab registry ...` (versions and stages) and `tunelab update` (new data, replay, forgetting gate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import app, command, console, user_errors

registry_app = typer.Typer(no_args_is_help=True, help="Model versions and stages (candidate, production, archived).")
app.add_typer(registry_app, name="registry")

RegistryOption = Annotated[
    Path | None,
    typer.Option("--registry", help="registry file; default $TUNELAB_REGISTRY or registry.db in the user's data folder"),
]


def _open(path: Path | None):
    from tunelab.lifecycle.registry import Registry

    return Registry(path)


def _accuracy(version) -> str:
    return f"{version.accuracy:.1%}" if version.accuracy is not None else "-"


@registry_app.command("register")
@user_errors
def register(
    run: Annotated[Path, typer.Argument(help="a finished run directory")],
    name: Annotated[str, typer.Option("--name", help="model name to register it under")],
    promote: Annotated[bool, typer.Option("--promote", help="make it the production version right away")] = False,
    note: Annotated[str | None, typer.Option(help="a note kept with the version")] = None,
    registry: RegistryOption = None,
) -> None:
    """Add a run as the next version of NAME (a candidate unless --promote)."""
    version = _open(registry).register(run, name, note=note, promote=promote)
    console.print(f"registered [bold]{version.ref}[/] ({version.stage}) -> {version.run_dir}", highlight=False)


@registry_app.command("list")
@user_errors
def list_versions(
    name: Annotated[str | None, typer.Argument(help="only this model's versions")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    registry: RegistryOption = None,
) -> None:
    """Every model's versions with their stage and test accuracy."""
    versions = _open(registry).versions(name)
    if as_json:
        print(json.dumps([{k: v for k, v in ver.to_dict().items() if k != "metrics"} | {"accuracy": ver.accuracy} for ver in versions], indent=2))
        return
    if not versions:
        console.print("the registry is empty — add a run with `tunelab registry register RUN --name NAME`")
        return
    table = Table("version", "stage", "accuracy", "parent", "created", "run")
    for version in versions:
        style = "bold green" if version.stage == "production" else ("dim" if version.stage == "archived" else "")
        table.add_row(version.ref, version.stage, _accuracy(version), str(version.parent or ""), version.created_at[:19], version.run_dir, style=style)
    console.print(table)


@registry_app.command("show")
@user_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME (its production version) or NAME@VERSION")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (with the full metrics)")] = False,
    registry: RegistryOption = None,
) -> None:
    """One version: stage, run, data fingerprint, parent, metrics, note."""
    version = _open(registry).resolve(ref)
    if as_json:
        print(json.dumps(version.to_dict(), indent=2, default=str))
        return
    for key, value in (
        ("version", version.ref),
        ("stage", version.stage),
        ("run", version.run_dir),
        ("accuracy", _accuracy(version)),
        ("f1 macro", f"{version.metrics['f1_macro']:.3f}" if version.metrics.get("f1_macro") is not None else "-"),
        ("data", version.data_fingerprint or "-"),
        ("parent", f"{version.name}@{version.parent}" if version.parent else "-"),
        ("created", version.created_at),
        ("updated", version.updated_at),
        ("note", version.note or "-"),
    ):
        console.print(f"[bold]{key:>9}[/]  {value}", highlight=False)


@registry_app.command("promote")
@user_errors
def promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    reason: Annotated[str | None, typer.Option(help="why (kept in the registry's event log)")] = None,
    registry: RegistryOption = None,
) -> None:
    """Make NAME@VERSION production; the previous production version is archived."""
    from tunelab.errors import TunelabError
    from tunelab.lifecycle.registry import parse_ref

    name, number = parse_ref(ref)
    if number is None:
        raise TunelabError(f"'{ref}' names no version", f"write {name}@VERSION (see `tunelab registry list {name}`)")
    version = _open(registry).promote(name, number, reason)
    console.print(f"[bold]{version.ref}[/] is production", highlight=False)


@registry_app.command("rollback")
@user_errors
def rollback(
    name: Annotated[str, typer.Argument(help="model name")],
    reason: Annotated[str | None, typer.Option(help="why (kept in the registry's event log)")] = None,
    registry: RegistryOption = None,
) -> None:
    """Go back to the version that was production before the current one."""
    version = _open(registry).rollback(name, reason)
    console.print(f"rolled back: [bold]{version.ref}[/] is production again", highlight=False)


@command("update")
def update(
    name: Annotated[str, typer.Argument(help="registered model name; its production version is updated")],
    data: Annotated[str, typer.Option("--data", help="the new labelled data (csv, tsv, jsonl, json, parquet, folder)")],
    replay: Annotated[float | None, typer.Option(help="share of the training mix drawn from the old training data (0: none); default 0.5")] = None,
    tolerance: Annotated[float, typer.Option(help="accuracy points the old test set may lose and still pass the gate")] = 1.0,
    class_weights: Annotated[
        str,
        typer.Option(help="joint | balanced | none. joint: weight each class as if the whole old training split were in the mix, not only its replay sample"),
    ] = "joint",
    epochs: Annotated[float | None, typer.Option(help="default: twice the production run's")] = None,
    lr: Annotated[float | None, typer.Option(help="default: a quarter of the production run's")] = None,
    warmup: Annotated[float | None, typer.Option(help="fraction of the steps warming up the learning rate; default: the production run's")] = None,
    batch_size: Annotated[int | None, typer.Option(help="default: the production run's")] = None,
    text_col: Annotated[str, typer.Option(help="column holding the text")] = "text",
    label_col: Annotated[str, typer.Option(help="column holding the label")] = "label",
    seed: Annotated[int | None, typer.Option(help="default: the production run's")] = None,
    blend: Annotated[
        bool, typer.Option("--blend/--no-blend", help="blend the trained weights with the production model's, the mix chosen on the eval splits")
    ] = True,
    promote: Annotated[bool, typer.Option("--promote/--no-promote", help="promote the candidate if it passes the gate")] = True,
    out: Annotated[str | None, typer.Option(help="candidate run directory; default runs/<name>-update-<time>")] = None,
    registry: RegistryOption = None,
) -> None:
    """Continue fine-tuning NAME's production version on new data mixed with replayed old data; promote it only if it passes the forgetting gate."""
    from tunelab.config import load_settings
    from tunelab.lifecycle.continual import UpdateSettings
    from tunelab.lifecycle.continual import update as run_update

    settings = load_settings(
        UpdateSettings,
        None,
        dict(
            name=name,
            data=data,
            replay=replay,
            tolerance=tolerance,
            class_weights=class_weights,
            epochs=epochs,
            lr=lr,
            warmup=warmup,
            batch_size=batch_size,
            text_col=text_col,
            label_col=label_col,
            seed=seed,
            blend=blend,
            promote=promote,
            out=out,
        ),
    )
    result = run_update(settings, _open(registry))
    report = result.report
    table = Table("set", "rows", "before", "after")
    for key, title in (("old", "old test set"), ("new", "new data (test)")):
        table.add_row(title, str(report["before"][key]["rows"]), f"{report['before'][key]['accuracy']:.1%}", f"{report['after'][key]['accuracy']:.1%}")
    console.print(table)
    for label in report["labels"]["added"]:
        # The gate looks at the new data as a whole; a new label can pass it while still often missed.
        right = report["after"]["new"]["accuracy_per_class"].get(label)
        console.print(f"new label {label!r}: " + ("no rows in the new test split" if right is None else f"{right:.1%} of its test rows right"), highlight=False)
    if report["blend"]:
        console.print(f"blend: {report['blend']['alpha']:g} of the way from the production weights to the trained ones (chosen on the eval splits)")
    verdict = "[green]passed[/]" if result.passed else "[red]failed[/]"
    console.print(f"gate {verdict}: " + "; ".join(result.reasons), highlight=False)
    console.print(f"[bold]{result.version.ref}[/] is {result.version.stage}; report: {result.run.path / 'update.html'}", highlight=False)


@registry_app.command("serve")
@user_errors
def serve(
    name: Annotated[str, typer.Argument(help="model name; its production version is served")],
    host: Annotated[str, typer.Option(help="address to bind; the default serves this machine only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    backend: Annotated[str, typer.Option(help=CHOICES_HELP)] = "torch",
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    interval: Annotated[float, typer.Option(help="seconds between registry checks for a new production version")] = 2.0,
    registry: RegistryOption = None,
) -> None:
    """Serve NAME's production version over HTTP; a promote or rollback switches the model live, without a restart."""
    from tunelab.config import load_settings
    from tunelab.serve.registry_watch import serve_registry
    from tunelab.serve.settings import ServeSettings

    settings = load_settings(ServeSettings, None, dict(host=host, port=port, backend=backend, workers=workers))
    serve_registry(name, settings, registry, interval)
