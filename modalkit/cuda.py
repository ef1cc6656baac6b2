"""Recognising errors that leave a CUDA context unusable, without importing torch."""

from __future__ import annotations

_TORCH_TYPES = {"OutOfMemoryError", "AcceleratorError", "CudaError"}
_MESSAGES = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "device-side assert", "CUDA out of memory")


def is_cuda_error(exc: BaseException) -> bool:
    """True for torch.cuda errors and errors whose message shows a broken CUDA context."""
    kind = type(exc)
    if kind.__module__.split(".")[0] == "torch" and (
        kind.__module__.startswith("torch.cuda") or kind.__name__ in _TORCH_TYPES
    ):
        return True
    message = str(exc)
    return any(marker in message for marker in _MESSAGES)
