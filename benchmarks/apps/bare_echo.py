"""The yardstick for the echo benchmark: a bare FastAPI echo on uvicorn (uvloop, httptools, one worker).

    python benchmarks/apps/bare_echo.py PORT

The same `{"text": str}` in and out as `echo_app.py`, with nothing between the route and the socket: what
`benchmarks/overhead.py` compares modalkit's echo with.
"""

import sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Text(BaseModel):
    text: str


app = FastAPI()


@app.post("/predict")
async def predict(item: Text) -> Text:
    return item


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )
