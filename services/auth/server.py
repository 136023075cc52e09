"""The gRPC adapter of the auth service: proto in, use case, proto out."""

from __future__ import annotations

from typing import Any

from services.api.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.domain import User
from services.auth.service import AuthService, IssuedTokens
from services.kit.auth import current_principal
from services.kit.identity import client_address
from services.kit.protos import timestamp

SERVICE_NAME = "auth.v1.AuthService"
# IssueServiceToken is internal (the edge refuses it) but needs no token: its request is the proof.
PUBLIC_METHODS = frozenset(
    f"/{SERVICE_NAME}/{name}" for name in ("SignUp", "Login", "Refresh", "Logout", "GetJwks", "IssueServiceToken")
)


def user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        user_id=user.user_id, email=user.email, display_name=user.display_name, created_at=timestamp(user.created_at)
    )


def token_pair(tokens: IssuedTokens) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        token_type="Bearer",
        expires_in_seconds=int(tokens.access_ttl.total_seconds()),
        refresh_expires_in_seconds=int(tokens.refresh_ttl.total_seconds()),
    )


class AuthServer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, service: AuthService, edge_credential: str) -> None:
        self.service = service
        self.edge_credential = edge_credential

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Any) -> auth_pb2.SignUpResponse:
        user, tokens = await self.service.sign_up(request.email, request.password, request.display_name)
        return auth_pb2.SignUpResponse(user=user_message(user), tokens=token_pair(tokens))

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        address = client_address(context.invocation_metadata(), context.peer(), self.edge_credential)
        user, tokens = await self.service.login(request.email, request.password, address)
        return auth_pb2.LoginResponse(user=user_message(user), tokens=token_pair(tokens))

    async def Refresh(self, request: auth_pb2.RefreshRequest, context: Any) -> auth_pb2.RefreshResponse:
        return auth_pb2.RefreshResponse(tokens=token_pair(await self.service.refresh(request.refresh_token)))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Any) -> auth_pb2.LogoutResponse:
        revoked = await self.service.logout(request.refresh_token, request.all_sessions)
        return auth_pb2.LogoutResponse(sessions_revoked=revoked)

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.JsonWebKey(**jwk) for jwk in self.service.jwks()])

    async def IssueServiceToken(
        self, request: auth_pb2.IssueServiceTokenRequest, context: Any
    ) -> auth_pb2.IssueServiceTokenResponse:
        issued = self.service.issue_service_token(request.service, request.credential)
        return auth_pb2.IssueServiceTokenResponse(
            service_token=issued.token, expires_in_seconds=int(issued.expires_in_s)
        )

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        return auth_pb2.WhoAmIResponse(user=user_message(await self.service.who_am_i(current_principal().user_id)))
