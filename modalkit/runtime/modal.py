"""`ModalRuntime`: the web function calls the service class of the same app on Modal."""

from __future__ import annotations

from typing import Any

from modalkit.exceptions import JobExpired
from modalkit.jobs import AsyncRequest, Job, job_outcome
from modalkit.observation import Observation
from modalkit.outcome import Failure


class ModalRuntime:
    def __init__(self, service: Any, model_names: list[str], function_call: Any = None, local: Any = None) -> None:
        """`local`: the class as defined in app.py, when `service` is a deployed one (`modal.Cls.from_name`)."""
        import modal

        bound = with_config_concurrency(service, local if local is not None else service)
        self._objects = {name: bound(model_name=name) for name in model_names}
        self._function_call = function_call or modal.FunctionCall

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def submit(self, model_name: str, item: Any) -> Any:
        import modal.exception

        try:
            return await self._objects[model_name].process_request.remote.aio(item)
        except modal.exception.Error as exc:
            return Failure("unavailable", f"the model container failed: {type(exc).__name__}: {exc}")

    async def spawn(self, model_name: str, request: AsyncRequest) -> str:
        """The job id is the FunctionCall id; the container pushes the result to the request's queues."""
        call = await self._objects[model_name].process_request.spawn.aio(request)
        return str(call.object_id)

    async def job(self, job_id: str) -> Job | None:
        import modal.exception

        call = self._function_call.from_id(job_id)
        try:
            result = await call.get.aio(timeout=0)
        except modal.exception.OutputExpiredError:  # before TimeoutError: it is a subclass of modal's
            raise JobExpired(f"the result of job {job_id} has expired (Modal keeps results for a while)") from None
        except (TimeoutError, modal.exception.TimeoutError):
            return Job(job_id=job_id, status="running")  # Modal does not tell queued from running
        except modal.exception.NotFoundError:
            return None
        except modal.exception.Error as exc:
            result = Failure("unavailable", f"{type(exc).__name__}: {exc}")
        status, outcome = job_outcome(result)
        if status == "failed":
            return Job(job_id=job_id, status="failed", error=outcome)
        return Job(job_id=job_id, status="succeeded", result=outcome)

    def ready(self) -> bool:
        return True

    def observe(self) -> Observation:
        return Observation()  # batches run in Modal containers, which Modal itself observes

    def health(self) -> dict[str, Any]:
        return {"runtime": "modal", "models": {name: {} for name in self._objects}}


def with_config_concurrency(service: Any, local: Any = None) -> Any:
    """The service class as it must be called for the YAML's `max_concurrent_inputs` to hold on Modal.

    A class decorated with `@modal.concurrent` keeps its own setting. Without the decorator (ModalKit's
    deployment guide has none), `Cls.with_concurrency` carries the configured value with every call.
    `local` is the class as app.py defines it (default: `service` itself), which holds the config.
    """
    from modalkit.app_loader import user_class

    local = service if local is None else local
    try:
        config = getattr(user_class(local), "modal_config", None)
    except AssertionError:  # a deployed class looked up by name carries no Python class
        return service
    if config is None or not hasattr(service, "with_concurrency"):
        return service
    wanted = config.app_settings.deployment_config.max_concurrent_inputs
    if wanted <= 1 or declared_concurrency(local) is not None:
        return service
    return service.with_concurrency(max_inputs=wanted)


def declared_concurrency(service: Any) -> int | None:
    """`max_inputs` of the `@modal.concurrent` on a Modal class or function, None without one."""
    target = service._get_class_service_function() if hasattr(service, "_get_class_service_function") else service
    info = target.info().concurrency_info
    return None if info is None else int(info.max_inputs)
