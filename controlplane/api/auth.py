"""The one place a call's credential is checked: a server interceptor.

Every RPC of every brinell.v1 service names the kind of access it needs in POLICY (built from
the proto descriptors at import, so a new RPC without a policy stops the server from
starting). The interceptor authenticates the caller (a bearer token, or with mutual TLS an
agent's client certificate), asks the domain whether that principal has the access, and
hands the principal to the servicer through ``current()``. Health and reflection are open.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from brinell.v1 import (
    agent_service_pb2,
    artifact_service_pb2,
    auth_service_pb2,
    entry_point_service_pb2,
    experiment_service_pb2,
    job_service_pb2,
    model_service_pb2,
    plugin_service_pb2,
)

from ..domain.accounts import Accounts
from ..domain.errors import DomainError
from ..domain.identity import Access, Principal, Unauthenticated, authorize
from .errors import Ctx, abort_with

R, W, A = Access.READ, Access.WRITE, Access.ADMIN

_POLICY_BY_SERVICE: dict[Any, dict[str, Access]] = {
    experiment_service_pb2: {
        "CreateExperiment": W,
        "GetExperiment": R,
        "ListExperiments": R,
        "UpdateExperiment": W,
        "DeleteExperiment": W,
    },
    entry_point_service_pb2: {
        "UploadEntryPoint": W,
        "GetEntryPoint": R,
        "ListEntryPoints": R,
        "GetEntryPointRevision": R,
        "ListEntryPointRevisions": R,
    },
    job_service_pb2: {
        "SubmitJob": W,
        "GetJob": R,
        "ListJobs": R,
        "WatchJob": R,
        "StreamJobLogs": R,
        "CancelJob": W,
    },
    agent_service_pb2: {
        "Connect": Access.CONNECT,
        "DownloadBlob": Access.BLOB,
        "GetAgent": R,
        "ListAgents": R,
        "DrainAgent": A,
    },
    plugin_service_pb2: {
        "UploadPlugin": A,
        "GetPlugin": R,
        "ListPlugins": R,
        "GetPluginVersion": R,
        "ListPluginVersions": R,
        "ListPluginTasks": R,
        "YankPluginVersion": A,
        "DeletePluginVersion": A,
    },
    model_service_pb2: {
        "RegisterModel": W,
        "GetModel": R,
        "ListModels": R,
        "GetModelVersion": R,
        "ListModelVersions": R,
        "SetModelAlias": W,
        "DeleteModelAlias": W,
        "ResolveModel": R,
        "DownloadModelVersion": R,
    },
    artifact_service_pb2: {"ListJobArtifacts": R, "DownloadJobArtifact": R},
    auth_service_pb2: {
        "WhoAmI": Access.ANY,
        "CreateUser": A,
        "GetUser": Access.SELF,
        "ListUsers": A,
        "UpdateUser": A,
        "CreateToken": Access.SELF,
        "ListTokens": Access.SELF,
        "RevokeToken": Access.SELF,
        "ListAuditEvents": A,
        "CreateGroup": A,
        "GetGroup": Access.SELF,
        "ListGroups": Access.SELF,
        "DeleteGroup": A,
        "AddGroupMember": A,
        "RemoveGroupMember": A,
    },
}


def _build_policy() -> dict[str, Access]:
    policy: dict[str, Access] = {}
    for module, methods in _POLICY_BY_SERVICE.items():
        (service,) = module.DESCRIPTOR.services_by_name.values()
        declared = {m.name for m in service.methods}
        if declared != set(methods):
            missing, extra = sorted(declared - set(methods)), sorted(set(methods) - declared)
            raise RuntimeError(
                f"{service.full_name}: no access policy for {missing}, policy for unknown {extra}"
            )
        for name, access in methods.items():
            policy[f"/{service.full_name}/{name}"] = access
    return policy


#: Full method name -> the access it needs.
POLICY = _build_policy()
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("brinell_principal")


def current() -> Principal:
    """The caller of the RPC being served (set by the interceptor before the servicer runs)."""
    return _principal.get()


def bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, secret = str(value).partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated("the authorization metadata must be `Bearer TOKEN`")
            return secret.strip()
    return ""


CertPrincipal = Callable[[Ctx], Principal | None]


AGENT_CN_PREFIX = "agents/"


def agent_from_certificate(context: Ctx) -> Principal | None:
    """With mutual TLS: the agent a verified client certificate names, when its common name
    is ``agents/{agent_id}``. Any other certificate proves only that the client may connect;
    its caller still needs a token."""
    auth = context.auth_context() or {}
    names = [bytes(n).decode("utf-8", "replace") for n in auth.get("x509_common_name") or []]
    agent = next((n[len(AGENT_CN_PREFIX) :] for n in names if n.startswith(AGENT_CN_PREFIX)), "")
    return Principal("agent", agent) if agent else None


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_Interceptor):
    def __init__(self, accounts: Accounts, from_certificate: CertPrincipal | None = None) -> None:
        self.accounts = accounts
        self.from_certificate = from_certificate

    async def _enter(self, context: Ctx, access: Access) -> None:
        try:
            secret = bearer(context.invocation_metadata())
            who = None
            if not secret and self.from_certificate is not None:
                who = self.from_certificate(context)
            if who is None:
                who = await self.accounts.authenticate(secret)
            authorize(who, access)
        except DomainError as exc:
            await abort_with(context, exc)
            raise AssertionError("unreachable") from exc
        _principal.set(who)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        access = POLICY.get(method)
        return self._wrap(handler, access)

    def _wrap(self, handler: Handler, access: Access | None) -> Handler:
        # The stubs type method handlers as sync; on a grpc.aio server they are coroutines.
        h: Any = handler
        enter = self._enter

        async def check(context: Ctx) -> None:
            if access is None:  # served, yet not in POLICY: refuse rather than guess
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no access policy")
            assert access is not None
            await enter(context, access)

        if h.unary_unary is not None:
            uu = h.unary_unary

            async def unary_unary(request: Any, context: Ctx) -> Any:
                await check(context)
                return await uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, h.request_deserializer, h.response_serializer
            )
        if h.unary_stream is not None:
            us = h.unary_stream

            async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                await check(context)
                async for item in us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, h.request_deserializer, h.response_serializer
            )
        if h.stream_unary is not None:
            su = h.stream_unary

            async def stream_unary(requests: Any, context: Ctx) -> Any:
                await check(context)
                return await su(requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, h.request_deserializer, h.response_serializer
            )
        ss = h.stream_stream
        assert ss is not None

        async def stream_stream(requests: Any, context: Ctx) -> AsyncIterator[Any]:
            await check(context)
            async for item in ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, h.request_deserializer, h.response_serializer
        )
