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

    _choose_config(app_path, config_files)
    try:
        asgi_app = find_web_app(import_app(app_path))
    except ModalkitError as exc:
        raise click.ClickException(str(exc)) from None
    uvicorn.run(asgi_app, host=host, port=port, log_level=log_level, access_log=False)


@main.command()
@click.option(
    "--file",
    "config_files",
    help="Config file(s), comma-separated; default: $MODALKIT_CONFIG or modalkit.yaml.",
)
def config(config_files: str | None) -> None:
    """Print the resolved configuration and the Modal arguments it becomes."""
    import yaml

    from modalkit.config import ModalConfig

    try:
        resolved = ModalConfig(config_files)
        modal_args = {
            "app.cls": _printable(resolved.get_app_cls_settings()),
            "modal.batched": resolved.get_batched_settings(),
            "modal.concurrent (service)": resolved.get_concurrent_settings(),
            "modal.concurrent (web handler)": resolved.get_concurrent_settings(handler=True),
            "app.function (web handler)": _printable(resolved.get_handler_settings()),
            "modal.asgi_app": resolved.get_asgi_app_settings(),
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
