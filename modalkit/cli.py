"""The `modalkit` command: `serve` an app locally, `run` bulk inference, `config`, `stats`, `init`."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modalkit.exceptions import BulkStopped, ModalkitError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from modalkit.runtime import Runtime

INPUT_HELP = 'JSONL: one input per line; a file field may name a file, {"file": "path"}, relative to it.'
OUTPUT_HELP = "JSONL: line i answers input line i; an existing file is resumed."


@click.group()
def main() -> None:
    """Serve modalkit apps locally and inspect their configuration."""


@main.command()
@click.argument("app_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes the server.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--config", "config_files", help="Config file(s), comma-separated; default: modalkit.yaml.")
@click.option("--log-level", default="info", show_default=True)
def serve(app_path: str, host: str, port: int, config_files: str | None, log_level: str) -> None:
    """Serve APP_PATH (a file with a ModalService and an @modal.asgi_app function) on the local runtime."""
    import uvicorn

    from modalkit.config.schema import AppSettings
    from modalkit.http_edge import edge_protocol, fit_open_files
    from modalkit.logs import configure_logging
    from modalkit.web import served_by

    configure_logging(log_level)
    asgi_app = _load_web_app(app_path, config_files)
    served = served_by(asgi_app)  # None for a plain FastAPI app: the default settings then
    settings = served.settings if served is not None else AppSettings()
    grace = settings.local_config.shutdown_grace_seconds
    edge = edge_protocol(settings.limits, fit_open_files(settings.limits.max_connections))
    uvicorn.run(
        asgi_app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(grace) or None,
        http=edge,
    )


@main.command()
@click.argument("app_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False), help=INPUT_HELP)
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help=OUTPUT_HELP)
@click.option("--config", "config_files", help="Config file(s), comma-separated; default: modalkit.yaml.")
@click.option("--model-name", help="The model entry to run; default: the service's.")
@click.option("--window", type=int, help="Items in flight; default: two full batches per container.")
@click.option("--modal", "on_modal", is_flag=True, help="Run on the deployed app (modal deploy) instead of locally.")
def run(
    app_path: str,
    input_path: str,
    output_path: str,
    config_files: str | None,
    model_name: str | None,
    window: int | None,
    on_modal: bool,
) -> None:
    """Bulk inference over a JSONL file: batched, in order, resumable; locally, or on Modal with --modal."""
    import asyncio

    from modalkit.logs import configure_logging
    from modalkit.runtime import select_runtime
    from modalkit.runtime.capacity import in_flight_window
    from modalkit.web import served_by

    configure_logging("warning")
    served = served_by(_load_web_app(app_path, config_files))
    if served is None:
        raise click.ClickException(f"{app_path}: its web app was not made by modalkit's create_web_endpoints")
    if served.streaming:
        raise click.ClickException(f"{app_path}: a streaming service answers /predict_stream; bulk runs need /predict")
    try:
        name = served.model_check(model_name)
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None
    runtime = served.runtime
    if on_modal:  # the deployed class, looked up by app and class name; Modal batches with @modal.batched
        runtime = select_runtime(served.service, served.config, [name], served.input_model, deployed=True)
    source, output = Path(input_path), Path(output_path)
    in_flight = window or in_flight_window(served.config)
    try:
        result = asyncio.run(_run_bulk(runtime, name, served.input_model, source, output, in_flight))
    except BulkStopped as exc:
        raise click.ClickException(
            f"stopped: {exc}; {output} holds every line answered so far, run again to resume"
        ) from None
    click.echo(
        f"{int(result['done'])} items ({int(result['errors'])} failed) at {result['items_per_s']:.1f} items/s; "
        f"{int(result['skipped'])} were already in {output}"
    )


@main.command()
@click.argument("name")
def init(name: str) -> None:
    """Create NAME/ with app.py, modalkit.yaml and test_app.py from the MiniLM example."""
    from modalkit.scaffold import scaffold

    try:
        target = scaffold(name, Path.cwd())
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {target}/: app.py, modalkit.yaml, test_app.py")
    click.echo(f"next: modalkit serve {name}/app.py    (and: pytest {name}/test_app.py)")


@main.command()
@click.argument("url", default="http://127.0.0.1:8000")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON of /stats.")
def stats(url: str, as_json: bool) -> None:
    """Usage of a running server: invocations, cold vs warm starts and latency, batch size, estimated cost."""
    import json

    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/stats", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot read {url}/stats: {exc}") from None
    data = response.json()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    cost = data["cost"]
    click.echo(f"invocations        {data['invocations']}  (cold {data['cold_starts']}, warm {data['warm_starts']})")
    for kind in ("cold", "warm"):
        p = data["latency_ms"][kind]
        click.echo(f"{kind} latency ms    p50 {p['p50']}  p95 {p['p95']}  p99 {p['p99']}")
    click.echo(f"batches            {data['batches']}  (mean size {data['mean_batch_size']})")
    click.echo(
        f"estimated cost     ${cost['estimated_usd']:.6f} for {cost['container_seconds']} container-seconds"
        f" on {cost['gpu'] or 'CPU'} (Modal prices of {cost['prices_taken_on']})"
    )


@main.command()
@click.option(
    "--file",
    "config_files",
    help="Config file(s), comma-separated; default: $MODALKIT_CONFIG or modalkit.yaml.",
)
@click.option("--check", is_flag=True, help="Only validate: print every problem (file and YAML path), or OK.")
def config(config_files: str | None, check: bool) -> None:
    """Print the resolved configuration and the Modal arguments it becomes."""
    import yaml

    from modalkit.config import ModalConfig

    if check:
        try:
            checked = ModalConfig(config_files)
        except ModalkitError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"OK: {', '.join(str(f) for f in checked.files)}")
        return
    try:
        resolved = ModalConfig(config_files)
        modal_args = {
            "app.cls": _printable(resolved.get_app_cls_settings()),
            "modal.batched": resolved.get_batched_settings(),
            "modal.concurrent (service)": resolved.get_concurrent_settings(),
            "modal.concurrent (web handler)": resolved.get_concurrent_settings(handler=True),
            "app.function (web handler)": _printable(resolved.get_handler_settings()),
            "modal.asgi_app": resolved.get_asgi_app_settings(),
            "modal.enter (load_artefacts)": resolved.get_enter_settings(),
        }
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"# files: {', '.join(str(f) for f in resolved.files)}")
    click.echo(yaml.safe_dump(resolved.to_dict(), sort_keys=False), nl=False)
    click.echo("# Modal arguments")
    click.echo(yaml.safe_dump(modal_args, sort_keys=False), nl=False)


async def _run_bulk(
    runtime: Runtime, name: str, input_model: type[BaseModel], source: Path, output: Path, in_flight: int
) -> dict[str, float]:
    """Every line of `source` not yet answered in `output`, through `runtime`, with a progress bar."""
    from tqdm import tqdm

    from modalkit.bulk import completed_lines, run_file

    total = sum(1 for line in source.open() if line.strip())
    await runtime.start()
    try:
        with tqdm(total=total, initial=completed_lines(output), unit="item", file=sys.stderr) as bar:
            submit = partial(runtime.submit, name)
            return await run_file(source, output, submit, input_model, in_flight, bar.update)
    finally:
        await runtime.stop()


def _load_web_app(app_path: str, config_files: str | None) -> Any:
    """The web app of APP_PATH, with its config chosen as `_choose_config` says."""
    from modalkit.app_loader import import_app
    from modalkit.web.loading import find_web_app

    _choose_config(app_path, config_files)
    try:
        return find_web_app(import_app(app_path))
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None


def _choose_config(app_path: str, config_files: str | None) -> None:
    """--config, else $MODALKIT_CONFIG, else the modalkit.yaml beside the app, else ./modalkit.yaml."""
    if config_files:
        os.environ["MODALKIT_CONFIG"] = config_files
    elif not os.environ.get("MODALKIT_CONFIG"):
        beside = Path(app_path).resolve().parent / "modalkit.yaml"
        if beside.is_file():
            os.environ["MODALKIT_CONFIG"] = str(beside)


def _printable(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, list, tuple, type(None))) else repr(v) for k, v in kwargs.items()}


if __name__ == "__main__":
    sys.exit(main())
