"""The HTTP routes: thin, each hands its request to the serving code (vLLM's layout)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from powersampling.http.protocol import ModelCard, ModelList
from powersampling.http.serving_chat import OpenAIServingChat
from powersampling.http.serving_completion import OpenAIServingCompletion
from powersampling.serving.core import ServingCore

router = APIRouter()


def _core(request: Request) -> ServingCore:
    return request.app.state.core  # type: ignore[no-any-return]


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    serving: OpenAIServingChat = request.app.state.serving_chat
    return await serving.create(request)


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    serving: OpenAIServingCompletion = request.app.state.serving_completion
    return await serving.create(request)


@router.get("/v1/models")
async def list_models(request: Request) -> ModelList:
    core = _core(request)
    header = request.headers.get("authorization")
    core.identify([("authorization", header)] if header is not None else [])
    engine, _ = core.ready_engine()
    return ModelList(data=[ModelCard(id=engine.info.model, created=int(request.app.state.started))])


@router.get("/health")
async def health() -> Response:
    """Liveness: the process answers (no credentials needed, like gRPC's health service)."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: 200 once the model is loaded, 503 while it loads or the server drains."""
    core = _core(request)
    if core.ready and not request.app.state.draining:
        return JSONResponse({"status": "ready", "model": core.engine.info.model if core.engine else None})
    status = "draining" if request.app.state.draining else "loading"
    return JSONResponse({"status": status}, status_code=503, headers={"retry-after": "5"})


__all__ = ["router"]
