"""The local runtime: batcher, container pool and worker processes."""

from modalkit.runtime.local.runtime import LocalRuntime

__all__ = ["LocalRuntime"]
