"""The baseline of bench/service.py: binary cross-entropy served the way most users write it.

    python -m uvicorn bench.plain_app:app --loop uvloop --http httptools --no-access-log

A pydantic model with ``list[float]`` fields, a sync (``def``) endpoint that FastAPI runs
in its threadpool, NumPy for the maths, and a plain ``dict`` returned with no return
annotation, so FastAPI's default response path serialises it (``jsonable_encoder``, then
``JSONResponse`` with the stdlib ``json``). Nothing here is tuned: that is the point of
the comparison. The response mirrors lossd's API (``loss`` and, for ``reduction: none``,
``losses``) so that both servers do the same work.

``typed_app`` is the same endpoint with a response model (``-> Resp``): recent FastAPI
versions then serialise with pydantic's Rust core instead of ``jsonable_encoder`` +
``json.dumps``. bench/service.py measures it only with ``--typed``, for information.
``floor_app`` is no loss service at all but the HTTP floor the benchmark subtracts.
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from bench._common import asgi_lifespan, receive_body  # uvicorn imports this as bench.plain_app


class Req(BaseModel):
    predictions: list[float]
    labels: list[float]
    reduction: str = "mean"


class Resp(BaseModel):
    loss: float
    losses: list[float] | None = None


def _losses(req: Req) -> np.ndarray:
    s = np.asarray(req.predictions, dtype=np.float64)
    y = np.asarray(req.labels, dtype=np.float64)
    if s.shape != y.shape:
        raise HTTPException(422, "predictions and labels must have the same length")
    if req.reduction not in ("mean", "sum", "none"):
        raise HTTPException(422, "reduction must be mean, sum or none")
    # the numerically stable form of -y log σ(s) - (1 - y) log(1 - σ(s))
    return np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))


def _answer(req: Req):
    losses = _losses(req)
    if req.reduction == "sum":
        return {"loss": float(losses.sum())}
    mean = float(losses.mean())
    if req.reduction == "none":
        return {"loss": mean, "losses": losses.tolist()}
    return {"loss": mean}


app = FastAPI(title="plain BCE")


@app.post("/loss")
def loss(req: Req):
    return _answer(req)


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


typed_app = FastAPI(title="plain BCE, typed response")


@typed_app.post("/loss")
def typed_loss(req: Req) -> Resp:
    return Resp(**_answer(req))


@typed_app.get("/healthz")
def typed_healthz() -> dict[str, str]:
    return {"status": "ok"}


# ----------------------------------------------------------------------------- HTTP floor

_blobs: dict[int, bytes] = {}


async def floor_app(scope, receive, send) -> None:
    """The HTTP floor (a raw ASGI app, for bench/service.py): reads the whole request body
    and answers with a pre-built JSON string of ``X-Answer-Bytes`` bytes, parsing nothing.
    Under the same uvicorn settings it costs what any server pays to move the same bytes
    (client, loopback, httptools, ASGI), so latency above it is the server's own work."""
    if scope["type"] == "lifespan":
        await asgi_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    chunks = await receive_body(receive, keep=True)
    if chunks is None:
        return
    b"".join(chunks)  # as Starlette's request.body() does
    size = 2
    for k, v in scope["headers"]:
        if k == b"x-answer-bytes":
            size = max(2, int(v))
    blob = _blobs.get(size)
    if blob is None:
        blob = _blobs[size] = b'"' + b"x" * (size - 2) + b'"'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(size).encode())]})
    await send({"type": "http.response.body", "body": blob})
