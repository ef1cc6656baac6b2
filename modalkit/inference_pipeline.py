"""ModalKit's `InferencePipeline`: three steps with a dict between them, run by our one `InferenceBase` chain."""

from __future__ import annotations

from typing import Any

from modalkit.inference import InferenceBase


class InferencePipeline(InferenceBase):
    """Subclass with `preprocess(input_list) -> dict`, `predict(input_list, preprocessed) -> dict` and
    `postprocess(input_list, raw_output) -> list`, as in ModalKit.

    The constructor gets the model entry's keys as keyword arguments and the model folder as
    `all_model_data_folder`. A batch that raises is retried item by item, so one bad input fails alone.
    """

    model_folder_argument = "all_model_data_folder"

    def __init__(
        self, model_name: str, all_model_data_folder: str, common_settings: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(model_name=model_name, model_dir=str(all_model_data_folder), common_settings=common_settings)
        self.all_model_data_folder = str(all_model_data_folder)

    def preprocess(self, input_list: list[Any]) -> Any:
        return {}

    def predict(self, input_list: list[Any], preprocessed_data: Any = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(input_list, preprocessed_data)")

    def postprocess(self, input_list: list[Any], raw_output: Any = None) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement postprocess(input_list, raw_output)")

    def run_inference(self, input_list: list[Any]) -> list[Any]:
        """preprocess -> predict -> postprocess on one batch, without the item-by-item retry of `run`."""
        return self._run_checked(input_list)

    def _run_steps(self, inputs: list[Any]) -> list[Any]:
        preprocessed = self.preprocess(inputs)
        return list(self.postprocess(inputs, self.predict(inputs, preprocessed)))
