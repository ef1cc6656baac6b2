"""`InferenceBase.run`: the pipeline chains, one bad item fails alone, CUDA errors propagate."""

from __future__ import annotations

import pytest

from modalkit.cuda import is_cuda_error
from modalkit.exceptions import InferenceError
from modalkit.inference import InferenceBase
from modalkit.outcome import Failure, http_status


class Doubler(InferenceBase):
    def preprocess(self, inputs: list[int]) -> list[int]:
        return [i + 1 for i in inputs]

    def predict(self, inputs: list[int]) -> list[int]:
        if 4 in inputs:  # input 3 after preprocess
            raise ValueError("three is not allowed")
        if 100 in inputs:
            raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasSgemm")
        return [i * 2 for i in inputs]

    def postprocess(self, outputs: list[int]) -> list[int]:
        return [o - 1 for o in outputs]


def test_pipeline_chains_preprocess_predict_postprocess() -> None:
    assert Doubler().run([1, 2]) == [3, 5]


def test_one_bad_item_fails_alone() -> None:
    outputs = Doubler().run([1, 3, 2])
    assert outputs[0] == 3 and outputs[2] == 5
    assert isinstance(outputs[1], ValueError)
    assert http_status(Failure.from_exception(outputs[1])) == 500


def test_cuda_errors_propagate_for_the_container_to_recycle() -> None:
    with pytest.raises(RuntimeError, match="CUBLAS"):
        Doubler().run([1, 99])


def test_wrong_number_of_outputs_is_an_item_error() -> None:
    class Short(InferenceBase):
        def predict(self, inputs: list[int]) -> list[int]:
            return []

    outputs = Short().run([1, 2])
    assert all("returned 0 outputs for 1 inputs" in str(o) for o in outputs)


def test_inference_error_chooses_the_status() -> None:
    class Picky(InferenceBase):
        def predict(self, inputs: list[str]) -> list[str]:
            raise InferenceError("text too long", status_code=413)

    failure = Failure.from_exception(Picky().run(["x"])[0])
    assert (http_status(failure), failure.detail) == (413, "text too long")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("CUDA error: an illegal memory access was encountered", True),
        ("CUDA error: device-side assert triggered", True),
        ("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR", True),
        ("index out of range", False),
    ],
)
def test_cuda_error_detection(message: str, expected: bool) -> None:
    assert is_cuda_error(RuntimeError(message)) is expected


def test_cuda_error_detection_by_torch_type() -> None:
    import torch

    assert is_cuda_error(torch.cuda.OutOfMemoryError("out of memory"))
