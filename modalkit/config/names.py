"""The names modalkit's configuration is read under: its environment variables and its default file.

A module of constants only, so that `settings.py` (which reads them) and `translate.py` (which writes
them into the image) share them without importing each other.
"""

ENV_PREFIX = "MODALKIT_"
CONFIG_ENV = "MODALKIT_CONFIG"
# Inside a Modal container the resolved config travels in the image's environment (see translate.build_image).
RESOLVED_CONFIG_ENV = "MODALKIT_CONFIG_JSON"
DEFAULT_CONFIG_FILE = "modalkit.yaml"
# Appended to app_prefix for the Modal app name (ModalKit's "-dev" by default in its import path).
APP_POSTFIX_ENV = "MODALKIT_APP_POSTFIX"
