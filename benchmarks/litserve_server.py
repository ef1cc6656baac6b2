"""A modalkit app's model behind LitServe, for benchmarks/vs_litserve.py.

    python benchmarks/litserve_server.py APP CONFIG SERVICE INPUT_MODEL --port P [--max-batch-size 32] [--wait-ms 10]
        [--workers 1] [--fast-queue]

SERVICE and INPUT_MODEL are names in APP. The model is built as modalkit builds it (the service's
`inference_implementation` with its entry in CONFIG, `_report.load_model`) and runs through the same
`InferenceBase.run`; only the serving around it is LitServe's.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import load_model


class ModalkitModelAPI(ls.LitAPI):  # type: ignore[misc]  # LitAPI is untyped to mypy
    def __init__(self, app: str, config: str, service: str, input_model: str, **batching: Any) -> None:
        super().__init__(**batching)
        self.app, self.config, self.service_name, self.input_name = app, config, service, input_model

    def setup(self, device: str) -> None:  # in LitServe's inference worker; the model picks its own device
        module, self.model = load_model(self.app, self.config, self.service_name)
        self.input_model = getattr(module, self.input_name)

    # LitServe builds its endpoint from these two signatures: an annotated `request` or return type would
    # become a FastAPI body or response model. Unannotated, the route takes the raw JSON.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return self.input_model.model_validate(request)

    def predict(self, inputs: list[Any]) -> list[Any]:
        outputs: list[Any] = self.model.run(inputs)
        return outputs

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        if isinstance(output, Exception):
            raise output
        return output.model_dump(mode="json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app")
    parser.add_argument("config")
    parser.add_argument("service")
    parser.add_argument("input_model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=10.0, help="LitServe's batch_timeout, in ms")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes (workers_per_device)")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ transport (fast_queue=True)")
    args = parser.parse_args()
    paths = os.path.abspath(args.app), os.path.abspath(args.config)
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.wait_ms / 1000}
    api = ModalkitModelAPI(*paths, args.service, args.input_model, **batching)
    # devices=1 even where there are several GPUs: the workers share one device, as modalkit's containers here.
    server = ls.LitServer(
        api, accelerator="auto", devices=1, workers_per_device=args.workers, fast_queue=args.fast_queue
    )
    # One API server process (LitServe's default: one per inference worker), uvicorn with uvloop and httptools.
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
