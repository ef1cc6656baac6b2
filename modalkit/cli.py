"""The `modalkit` command: `serve` an app locally, print its resolved `config`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from modalkit.exceptions import ModalkitError


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

    from modalkit.app_loader import find_web_app, import_app
    from modalkit.logs import configure_logging

    configure_logging(log_level)
    _choose_config(app_path, config_files)
    try:
        asgi_app = find_web_app(import_app(app_path))
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None
    config = getattr(getattr(asgi_app, "state", None), "config", None)
    grace = config.app_settings.local_config.shutdown_grace_seconds if config is not None else 30.0
    uvicorn.run(
        asgi_app, host=host, port=port, log_level=log_level, access_log=False, log_config=None,
        timeout_graceful_shutdown=int(grace) or None,
    )  # fmt: skip


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
