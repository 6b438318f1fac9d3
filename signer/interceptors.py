"""Run a check before every RPC handler of a grpc.aio server (the interceptors of signer.tls and
signer.local_callers).

``AdmittingInterceptor`` is their common base: a subclass implements ``admit(context, method)``, and
every method the server has (unknown methods stay unknown) runs it first, through ``wrap_handler``.
``wrap_handler(handler, check, method)`` returns the same handler with ``await check(context, method)``
run first, in the call's own task: grpc.aio runs every RPC in a task of its own, so a context variable
``check`` sets is that call's, visible to the servicer. ``check`` aborts the call (``context.abort``
raises) to refuse it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

Check = Callable[[Any, str], Awaitable[None]]


class AdmittingInterceptor(aio.ServerInterceptor):
    """Runs ``admit`` before every handler; ``admit`` aborts the call to refuse it."""

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_handler(handler, self.admit, handler_call_details.method)

    async def admit(self, context: Any, method: str) -> None:
        raise NotImplementedError


def wrap_handler(handler: grpc.RpcMethodHandler, check: Check, method: str) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await check(context, method)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, check, method), handler.request_deserializer,
            handler.response_serializer)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            await check(context, method)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer,
                                                    handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, check, method), handler.request_deserializer,
        handler.response_serializer)


def _streaming(inner: Any, check: Check, method: str) -> Any:
    """Wrap a streaming-response behaviour: an async generator, or a coroutine using context.write."""
    if inspect.isasyncgenfunction(inner):
        async def gen(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(context, method)
            async for item in inner(request, context):
                yield item

        return gen

    async def coro(request: Any, context: Any) -> Any:
        await check(context, method)
        return await inner(request, context)

    return coro
