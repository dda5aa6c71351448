"""Dependencies handed to routes: built once in the app's lifespan, never at import time."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.rag import RagPipeline


def get_pipeline(request: Request) -> RagPipeline:
    """The process's RAG pipeline."""
    pipeline: RagPipeline = request.app.state.pipeline
    return pipeline


def get_request_id(request: Request) -> str:
    """The id of the current request (also in the X-Request-Id header)."""
    return str(request.state.request_id)


Pipeline = Annotated[RagPipeline, Depends(get_pipeline)]
RequestId = Annotated[str, Depends(get_request_id)]
