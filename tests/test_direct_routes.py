"""`modalkit.web.direct_routes`: a route answered past FastAPI's router answers as it would through it."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from pydantic import BaseModel

from modalkit.web.direct_routes import add_direct_routes


class Accepted(BaseModel):
    job_id: str


def app_with_routes() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def own_shape(request: Request, exc: HTTPException) -> Response:
        return Response(f"refused: {exc.detail}", exc.status_code)

    @app.post("/accept", status_code=202, response_model=Accepted)
    async def accept(request: Request) -> Accepted:
        body = await request.json()
        if "job_id" not in body:
            raise HTTPException(422, "no job_id")
        return Accepted(job_id=body["job_id"])

    @app.post("/raw")
    async def raw(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    @app.post("/with_query")
    async def with_query(name: str) -> dict[str, str]:
        return {"name": name}

    return app


def test_a_direct_route_answers_as_through_the_router() -> None:
    app = app_with_routes()
    add_direct_routes(app, [("POST", "/accept"), ("POST", "/raw")])
    with TestClient(app) as client:
        accepted = client.post("/accept", json={"job_id": "j1"})
        assert (accepted.status_code, accepted.json()) == (202, {"job_id": "j1"})
        refused = client.post("/accept", json={})
        assert (refused.status_code, refused.text) == (422, "refused: no job_id")  # the app's own handler
        assert client.post("/raw", content=b"\x00\x01").content == b"\x00\x01"
        assert client.get("/accept").status_code == 405  # another method goes on to the router
        assert client.post("/with_query", params={"name": "a"}).json() == {"name": "a"}


def test_only_a_registered_route_that_takes_just_the_request_can_be_direct() -> None:
    app = app_with_routes()
    with pytest.raises(TypeError, match="must take only the request"):
        add_direct_routes(app, [("POST", "/with_query")])
    with pytest.raises(LookupError):
        add_direct_routes(app, [("POST", "/nowhere")])
