"""Recognising errors that leave a CUDA context unusable, without importing torch."""

from __future__ import annotations

_MESSAGES = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "device-side assert", "CUDA out of memory")


def is_cuda_error(exc: BaseException) -> bool:
    """True for torch.cuda errors and errors whose message shows a broken CUDA context."""
    kind = type(exc)
    if kind.__module__.startswith("torch.cuda") or kind.__name__ in {"AcceleratorError", "CudaError"}:
        return True
    message = str(exc)
    return any(marker in message for marker in _MESSAGES)
