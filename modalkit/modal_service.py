"""ModalKit's import path for the service class and the web app: the same objects as `modalkit`'s."""

from modalkit.service import ModalService
from modalkit.web import create_web_endpoints

__all__ = ["ModalService", "create_web_endpoints"]
