"""The gRPC adapter of the knowledge service: proto in, use case, proto out."""

from __future__ import annotations

from typing import Any

from services.api.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from services.kit.auth import current_principal
from services.kit.protos import timestamp
from services.knowledge.domain import Document, DocumentVersion, Membership, Role, Space
from services.knowledge.service import KnowledgeService

SERVICE_NAME = "knowledge.v1.KnowledgeService"
# Service-to-service checks: callers forward a user's token when they have one, but need none.
INTERNAL_METHODS = frozenset(f"/{SERVICE_NAME}/{name}" for name in ("CheckAccess", "ListAccessibleSpaces"))


def role_message(role: Role | None) -> knowledge_pb2.Role.ValueType:
    """Domain roles carry the proto's numbers; no role is ROLE_UNSPECIFIED."""
    return knowledge_pb2.Role.ValueType(0 if role is None else int(role))


def space_message(space: Space, caller_role: Role) -> knowledge_pb2.Space:
    return knowledge_pb2.Space(
        space_id=space.space_id,
        name=space.name,
        description=space.description,
        created_by=space.created_by,
        created_at=timestamp(space.created_at),
        caller_role=role_message(caller_role),
    )


def member_message(member: Membership) -> knowledge_pb2.Member:
    return knowledge_pb2.Member(
        space_id=member.space_id,
        user_id=member.user_id,
        role=role_message(member.role),
        added_by=member.added_by,
        added_at=timestamp(member.added_at),
        updated_at=timestamp(member.updated_at),
    )


def document_message(document: Document) -> knowledge_pb2.Document:
    return knowledge_pb2.Document(
        document_id=document.document_id,
        space_id=document.space_id,
        title=document.title,
        content=document.content,
        tags=document.tags,
        version=document.version,
        created_by=document.created_by,
        created_at=timestamp(document.created_at),
        updated_at=timestamp(document.updated_at),
        updated_by=document.updated_by,
    )


def version_message(version: DocumentVersion) -> knowledge_pb2.DocumentVersion:
    return knowledge_pb2.DocumentVersion(
        version=version.version,
        title=version.title,
        content=version.content,
        tags=version.tags,
        author_id=version.author_id,
        created_at=timestamp(version.created_at),
    )


def caller_id() -> str:
    return current_principal().user_id


class KnowledgeServer(knowledge_pb2_grpc.KnowledgeServiceServicer):
    def __init__(self, service: KnowledgeService) -> None:
        self.service = service

    # -- spaces

    async def CreateSpace(
        self, request: knowledge_pb2.CreateSpaceRequest, context: Any
    ) -> knowledge_pb2.CreateSpaceResponse:
        space = await self.service.create_space(caller_id(), request.name, request.description)
        return knowledge_pb2.CreateSpaceResponse(space=space_message(space, Role.OWNER))

    async def GetSpace(self, request: knowledge_pb2.GetSpaceRequest, context: Any) -> knowledge_pb2.GetSpaceResponse:
        space, role = await self.service.get_space(caller_id(), request.space_id)
        return knowledge_pb2.GetSpaceResponse(space=space_message(space, role))

    async def ListSpaces(
        self, request: knowledge_pb2.ListSpacesRequest, context: Any
    ) -> knowledge_pb2.ListSpacesResponse:
        page = await self.service.list_spaces(caller_id(), request.page_size, request.page_token)
        return knowledge_pb2.ListSpacesResponse(
            spaces=[space_message(space, role) for space, role in page.items], next_page_token=page.next_page_token
        )

    # -- members

    async def AddMember(self, request: knowledge_pb2.AddMemberRequest, context: Any) -> knowledge_pb2.AddMemberResponse:
        member = await self.service.add_member(caller_id(), request.space_id, request.user_id, request.role)
        return knowledge_pb2.AddMemberResponse(member=member_message(member))

    async def UpdateMemberRole(
        self, request: knowledge_pb2.UpdateMemberRoleRequest, context: Any
    ) -> knowledge_pb2.UpdateMemberRoleResponse:
        member = await self.service.update_member_role(caller_id(), request.space_id, request.user_id, request.role)
        return knowledge_pb2.UpdateMemberRoleResponse(member=member_message(member))

    async def RemoveMember(
        self, request: knowledge_pb2.RemoveMemberRequest, context: Any
    ) -> knowledge_pb2.RemoveMemberResponse:
        await self.service.remove_member(caller_id(), request.space_id, request.user_id)
        return knowledge_pb2.RemoveMemberResponse()

    async def ListMembers(
        self, request: knowledge_pb2.ListMembersRequest, context: Any
    ) -> knowledge_pb2.ListMembersResponse:
        page = await self.service.list_members(caller_id(), request.space_id, request.page_size, request.page_token)
        return knowledge_pb2.ListMembersResponse(
            members=[member_message(member) for member in page.items], next_page_token=page.next_page_token
        )

    # -- documents

    async def CreateDocument(
        self, request: knowledge_pb2.CreateDocumentRequest, context: Any
    ) -> knowledge_pb2.CreateDocumentResponse:
        document = await self.service.create_document(
            caller_id(), request.space_id, request.title, request.content, list(request.tags)
        )
        return knowledge_pb2.CreateDocumentResponse(document=document_message(document))

    async def GetDocument(
        self, request: knowledge_pb2.GetDocumentRequest, context: Any
    ) -> knowledge_pb2.GetDocumentResponse:
        document = await self.service.get_document(caller_id(), request.space_id, request.document_id)
        return knowledge_pb2.GetDocumentResponse(document=document_message(document))

    async def UpdateDocument(
        self, request: knowledge_pb2.UpdateDocumentRequest, context: Any
    ) -> knowledge_pb2.UpdateDocumentResponse:
        # Presence, not value, says what changes: "" is a real new content, [] clears the tags.
        document = await self.service.update_document(
            caller_id(),
            request.space_id,
            request.document_id,
            request.expected_version,
            title=request.title if request.HasField("title") else None,
            content=request.content if request.HasField("content") else None,
            tags=list(request.tags.values) if request.HasField("tags") else None,
        )
        return knowledge_pb2.UpdateDocumentResponse(document=document_message(document))

    async def DeleteDocument(
        self, request: knowledge_pb2.DeleteDocumentRequest, context: Any
    ) -> knowledge_pb2.DeleteDocumentResponse:
        version = await self.service.delete_document(
            caller_id(), request.space_id, request.document_id, request.expected_version
        )
        return knowledge_pb2.DeleteDocumentResponse(version=version)

    async def ListDocuments(
        self, request: knowledge_pb2.ListDocumentsRequest, context: Any
    ) -> knowledge_pb2.ListDocumentsResponse:
        page = await self.service.list_documents(caller_id(), request.space_id, request.page_size, request.page_token)
        return knowledge_pb2.ListDocumentsResponse(
            documents=[document_message(document) for document in page.items], next_page_token=page.next_page_token
        )

    async def ListDocumentVersions(
        self, request: knowledge_pb2.ListDocumentVersionsRequest, context: Any
    ) -> knowledge_pb2.ListDocumentVersionsResponse:
        page = await self.service.list_versions(
            caller_id(), request.space_id, request.document_id, request.page_size, request.page_token
        )
        return knowledge_pb2.ListDocumentVersionsResponse(
            versions=[version_message(version) for version in page.items], next_page_token=page.next_page_token
        )

    async def GetDocumentVersion(
        self, request: knowledge_pb2.GetDocumentVersionRequest, context: Any
    ) -> knowledge_pb2.GetDocumentVersionResponse:
        version = await self.service.get_version(caller_id(), request.space_id, request.document_id, request.version)
        return knowledge_pb2.GetDocumentVersionResponse(version=version_message(version))

    # -- internal

    async def CheckAccess(
        self, request: knowledge_pb2.CheckAccessRequest, context: Any
    ) -> knowledge_pb2.CheckAccessResponse:
        allowed, role = await self.service.check_access(request.user_id, request.space_id, request.required_role)
        return knowledge_pb2.CheckAccessResponse(allowed=allowed, role=role_message(role))

    async def ListAccessibleSpaces(
        self, request: knowledge_pb2.ListAccessibleSpacesRequest, context: Any
    ) -> knowledge_pb2.ListAccessibleSpacesResponse:
        spaces = await self.service.accessible_spaces(request.user_id, request.minimum_role)
        return knowledge_pb2.ListAccessibleSpacesResponse(
            spaces=[
                knowledge_pb2.AccessibleSpace(space_id=space_id, role=role_message(role)) for space_id, role in spaces
            ]
        )
