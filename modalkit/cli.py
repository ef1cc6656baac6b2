"""The `modalkit` command: `serve` an app locally, `run` bulk inference, `config`, `stats`, `init`."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import traceback
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modalkit import __version__
from modalkit.exceptions import BulkStopped, ModalkitError

if TYPE_CHECKING:
    from types import ModuleType

    from pydantic import BaseModel

    from modalkit.runtime import Runtime

INPUT_HELP = 'JSONL: one input per line; a file field may name a file, {"file": "path"}, relative to it.'
OUTPUT_HELP = "JSONL: line i answers input line i; an existing file is resumed."
CONFIG_HELP = "Config file(s), comma-separated; default: $MODALKIT_CONFIG, else modalkit.yaml beside the app or in ./"
LOG_LEVELS = click.Choice(["critical", "error", "warning", "info", "debug"], case_sensitive=False)
STARTUP_FAILURE = 3  # uvicorn's exit code when the app's startup (its containers' load) fails

config_option = click.option("--config", "config_files", metavar="FILES", help=CONFIG_HELP)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modalkit")
def main() -> None:
    """Serve modalkit apps locally and inspect their configuration."""


@main.command()
@click.argument("app_path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="MODALKIT_HOST",
    show_envvar=True,
    help="Address to bind; 0.0.0.0 exposes the server.",
)
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), envvar="MODALKIT_PORT", show_envvar=True
)
@config_option
@click.option("--log-level", type=LOG_LEVELS, default="info", show_default=True)
@click.option("--access-log", is_flag=True, help="Log one line per request (logger modalkit.access).")
@click.option("--reload", is_flag=True, help="Restart the server and its containers when a watched file changes.")
def serve(
    app_path: str, host: str, port: int, config_files: str | None, log_level: str, access_log: bool, reload: bool
) -> None:
    """Serve APP_PATH (a file with a ModalService and an @modal.asgi_app function) on the local runtime.

    --reload watches APP_PATH, the .py and YAML files beside it and the config files.
    """
    if reload:
        _serve_with_reload(app_path, host, port, config_files, log_level, access_log)
        return
    from modalkit.logs import configure_logging

    configure_logging(log_level, access_log=access_log)
    with _listen(host, port) as listening:  # bound before the app loads: a port in use is said at once
        _launch_container_template(app_path, config_files)
        started = _run_server(_load_web_app_taking_template(app_path, config_files), listening, log_level)
    if not started:
        sys.exit(STARTUP_FAILURE)


@main.command()
@click.argument("app_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False), help=INPUT_HELP)
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help=OUTPUT_HELP)
@config_option
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
    """Bulk inference over a JSONL file: batched, in order, resumable; locally, or on Modal with --modal.

    Exits 1 when any item failed; its line in the output holds the error.
    """
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
    done, failed = int(result["done"]), int(result["errors"])
    click.echo(
        f"{done} items ({failed} failed) at {result['items_per_s']:.1f} items/s; "
        f"{int(result['skipped'])} were already in {output}"
    )
    if failed:
        raise click.ClickException(f"{failed} of {done} items failed; their lines in {output} say why")


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
        f"estimated cost     ${cost['estimated_usd']:.4g} for {cost['container_seconds']} container-seconds"
        f" on {cost['gpu'] or 'CPU'} (Modal prices of {cost['prices_taken_on']})"
    )


@main.command()
@click.option(
    "--config",
    "--file",
    "config_files",
    metavar="FILES",
    help="Config file(s), comma-separated; default: $MODALKIT_CONFIG, else ./modalkit.yaml.",
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
    from modalkit.web.loading import find_web_app

    _choose_config(app_path, config_files)
    try:
        return find_web_app(_import_user_app(app_path))
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None


def _launch_container_template(app_path: str, config_files: str | None) -> None:
    """The process containers fork from imports the app and its libraries meanwhile, with the same config."""
    from modalkit.runtime.local.template import launch_early

    _choose_config(app_path, config_files)
    launch_early(app_path)


def _load_web_app_taking_template(app_path: str, config_files: str | None) -> Any:
    """`_load_web_app`; its local runtime takes the template launched for it, which is stopped if none does."""
    from modalkit.runtime.local.template import close_unadopted

    try:
        return _load_web_app(app_path, config_files)
    finally:
        close_unadopted()


def _import_user_app(app_path: str) -> ModuleType:
    """Import the user's file; what its own code gets wrong is one line naming the file and line, not a traceback."""
    from modalkit.app_loader import import_app

    try:
        return import_app(app_path)
    except ModalkitError:
        raise
    except SyntaxError as exc:
        raise click.ClickException(f"{exc.filename}:{exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise click.ClickException(
            f"{where.filename}:{where.lineno}: loading {app_path} raised {type(exc).__name__}: {exc}"
        ) from None


def _choose_config(app_path: str, config_files: str | None) -> None:
    """--config, else $MODALKIT_CONFIG, else the modalkit.yaml beside the app, else ./modalkit.yaml."""
    if config_files:
        os.environ["MODALKIT_CONFIG"] = config_files
    elif not os.environ.get("MODALKIT_CONFIG"):
        beside = Path(app_path).resolve().parent / "modalkit.yaml"
        if beside.is_file():
            os.environ["MODALKIT_CONFIG"] = str(beside)


def _run_server(asgi_app: Any, listening: socket.socket, log_level: str) -> bool:
    """Serve `asgi_app` on `listening` until Ctrl+C or SIGTERM; False when its startup failed."""
    import uvicorn

    from modalkit.config.schema import AppSettings
    from modalkit.http_edge import edge_protocol, fit_open_files
    from modalkit.web import served_by

    served = served_by(asgi_app)  # None for a plain FastAPI app: the default settings then
    settings = served.settings if served is not None else AppSettings()
    grace = settings.local_config.shutdown_grace_seconds
    host, port = listening.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(grace) or None,
            http=edge_protocol(settings.limits, fit_open_files(settings.limits.max_connections)),
        )
    )
    logging.getLogger("modalkit.serve").info("serving on http://%s:%d (Ctrl+C to quit)", host, port)
    server.run(sockets=[listening])
    return bool(server.started)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that an address in use is one clear line, not a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        hint = "; choose another with --port or MODALKIT_PORT" if exc.errno == errno.EADDRINUSE else ""
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return listening


def _serve_with_reload(
    app_path: str, host: str, port: int, config_files: str | None, log_level: str, access_log: bool
) -> None:
    """Supervise `modalkit serve` without --reload, restarting it when the app or its config changes."""
    from modalkit.config import ModalConfig
    from modalkit.config.names import DEFAULT_CONFIG_FILE
    from modalkit.reload import WatchedFiles, serve_with_reload

    _choose_config(app_path, config_files)  # the child inherits the choice through MODALKIT_CONFIG
    chosen = os.environ.get("MODALKIT_CONFIG") or DEFAULT_CONFIG_FILE
    configs = [Path(part.strip()) for part in chosen.split(",") if part.strip()]
    try:  # the server waits `shutdown_grace_seconds` for requests, then as long for its jobs
        with warnings.catch_warnings():  # the server says them, once
            warnings.simplefilter("ignore")
            grace = 2 * ModalConfig(chosen).app_settings.local_config.shutdown_grace_seconds + 10
    except ModalkitError:
        grace = 70.0  # the child will say what is wrong with the config; the default grace meanwhile
    command = [sys.executable, "-m", "modalkit", "serve", app_path, "--host", host, "--port", str(port)]
    command += ["--log-level", log_level] + (["--access-log"] if access_log else [])
    serve_with_reload(command, WatchedFiles(Path(app_path), configs), grace)


def _printable(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, list, tuple, type(None))) else repr(v) for k, v in kwargs.items()}
