"""AuthService: users, tokens, the audit log. Validate, convert, delegate."""

from __future__ import annotations

from brinell.v1 import auth_pb2
from brinell.v1 import auth_service_pb2 as pb
from brinell.v1 import auth_service_pb2_grpc as grpc_pb

from ..domain.accounts import Accounts
from ..domain.errors import InvalidArgument
from ..domain.identity import Role
from . import convert
from .auth import current
from .errors import Ctx, unary

KINDS = {
    auth_pb2.TOKEN_KIND_UNSPECIFIED: "user",
    auth_pb2.TOKEN_KIND_USER: "user",
    auth_pb2.TOKEN_KIND_AGENT: "agent",
}


def _role(value: int, field: str) -> Role:
    role = convert.role_from(value)
    if role is None:
        raise InvalidArgument("role must be ROLE_VIEWER, ROLE_MEMBER or ROLE_ADMIN", field=field)
    return role


class AuthServicer(grpc_pb.AuthServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    @unary
    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Ctx) -> pb.WhoAmIResponse:
        who = current()
        return pb.WhoAmIResponse(
            principal=who.name,
            role=convert.ROLES[who.role] if who.role else auth_pb2.ROLE_UNSPECIFIED,
            token=f"tokens/{who.token_id}" if who.token_id else "",
        )

    @unary
    async def CreateUser(
        self, request: pb.CreateUserRequest, context: Ctx
    ) -> pb.CreateUserResponse:
        user = await self.accounts.create_user(
            current(), request.user_id, _role(request.role, "role"), tuple(request.groups)
        )
        return pb.CreateUserResponse(user=convert.user(user))

    @unary
    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.GetUserResponse:
        user = await self.accounts.get_user(current(), request.name)
        return pb.GetUserResponse(user=convert.user(user))

    @unary
    async def ListUsers(self, request: pb.ListUsersRequest, context: Ctx) -> pb.ListUsersResponse:
        users, token = await self.accounts.users(request.page_size, request.page_token)
        return pb.ListUsersResponse(users=[convert.user(u) for u in users], next_page_token=token)

    @unary
    async def UpdateUser(
        self, request: pb.UpdateUserRequest, context: Ctx
    ) -> pb.UpdateUserResponse:
        paths = set(request.update_mask.paths)
        unknown = paths - {"role", "disabled"}
        if unknown or not paths:
            raise InvalidArgument(
                "update_mask must name `role` and/or `disabled`", field="update_mask"
            )
        u = request.user
        user = await self.accounts.update_user(
            current(),
            u.name,
            _role(u.role, "user.role") if "role" in paths else None,
            u.disabled if "disabled" in paths else None,
        )
        return pb.UpdateUserResponse(user=convert.user(user))

    @unary
    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Ctx
    ) -> pb.CreateTokenResponse:
        kind = KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind must be TOKEN_KIND_USER or TOKEN_KIND_AGENT", field="kind")
        token, secret = await self.accounts.create_token(
            current(),
            kind,
            request.user,
            request.agent_id,
            list(request.queues),
            dict(request.labels),
            request.description,
            request.ttl.ToNanoseconds() / 1e9 if request.HasField("ttl") else 0.0,
        )
        return pb.CreateTokenResponse(token=convert.token(token), secret=secret)

    @unary
    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Ctx
    ) -> pb.ListTokensResponse:
        tokens, nxt = await self.accounts.list_tokens(
            current(), request.page_size, request.page_token, request.user
        )
        return pb.ListTokensResponse(tokens=[convert.token(t) for t in tokens], next_page_token=nxt)

    @unary
    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        token = await self.accounts.revoke_token(current(), request.name)
        return pb.RevokeTokenResponse(token=convert.token(token))

    @unary
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        events, nxt = await self.accounts.audit_events(request.page_size, request.page_token)
        return pb.ListAuditEventsResponse(
            events=[convert.audit_event(e) for e in events], next_page_token=nxt
        )

    @unary
    async def CreateGroup(
        self, request: pb.CreateGroupRequest, context: Ctx
    ) -> pb.CreateGroupResponse:
        group = await self.accounts.create_group(current(), request.group_id, request.description)
        return pb.CreateGroupResponse(group=convert.group(group))

    @unary
    async def GetGroup(self, request: pb.GetGroupRequest, context: Ctx) -> pb.GetGroupResponse:
        return pb.GetGroupResponse(
            group=convert.group(await self.accounts.get_group(current(), request.name))
        )

    @unary
    async def ListGroups(
        self, request: pb.ListGroupsRequest, context: Ctx
    ) -> pb.ListGroupsResponse:
        groups, nxt = await self.accounts.groups(current(), request.page_size, request.page_token)
        return pb.ListGroupsResponse(groups=[convert.group(g) for g in groups], next_page_token=nxt)

    @unary
    async def DeleteGroup(
        self, request: pb.DeleteGroupRequest, context: Ctx
    ) -> pb.DeleteGroupResponse:
        await self.accounts.delete_group(current(), request.name)
        return pb.DeleteGroupResponse()

    @unary
    async def AddGroupMember(
        self, request: pb.AddGroupMemberRequest, context: Ctx
    ) -> pb.AddGroupMemberResponse:
        group = await self.accounts.set_member(current(), request.group, request.user, True)
        return pb.AddGroupMemberResponse(group=convert.group(group))

    @unary
    async def RemoveGroupMember(
        self, request: pb.RemoveGroupMemberRequest, context: Ctx
    ) -> pb.RemoveGroupMemberResponse:
        group = await self.accounts.set_member(current(), request.group, request.user, False)
        return pb.RemoveGroupMemberResponse(group=convert.group(group))
