"""Locust scenario `search`: people search the seeded notes, open a hit, and ask a question and
read the streamed answer, through Envoy's JSON API as a browser or script calls it.

Its actions are shared with `search_grpc` (the same over native gRPC) and `mixed`.
"""

from __future__ import annotations

from typing import Any

from loadtests.users.kit import JsonEdge, ScenarioUser, think_time, weighted
from services.api.chat.v1 import chat_pb2
from services.api.knowledge.v1 import knowledge_pb2
from services.api.vector.v1 import vector_pb2

SEARCH = "vector.v1.VectorService/Search"
GET_DOCUMENT = "knowledge.v1.KnowledgeService/GetDocument"
CREATE_CONVERSATION = "chat.v1.ChatService/CreateConversation"
ASK = "chat.v1.ChatService/Ask"


def search_and_open(user: Any) -> None:
    """Search as people do (a question about a topic), then open the best hit."""
    query = user.rng.choice(user.load.manifest.queries)
    found = user.edge.call("search", SEARCH, vector_pb2.SearchRequest(query=query, top_k=10), user.token)
    if found is None or not found.hits:
        return
    hit = found.hits[0]
    request = knowledge_pb2.GetDocumentRequest(space_id=hit.space_id, document_id=hit.document_id)
    user.edge.call("open hit", GET_DOCUMENT, request, user.token)


def ask(user: Any) -> None:
    """Ask a question in the person's conversation (opened on first use); read the answer to its end."""
    conversation = getattr(user, "conversation_id", "")
    if not conversation:
        request = chat_pb2.CreateConversationRequest(title=f"Questions of {user.person.name}")
        created = user.edge.call("new conversation", CREATE_CONVERSATION, request, user.token)
        if created is None:
            return
        conversation = user.conversation_id = created.conversation.conversation_id
    question = user.rng.choice(user.load.manifest.queries)
    user.edge.stream("ask", ASK, chat_pb2.AskRequest(conversation_id=conversation, question=question), user.token)


SEARCH_ACTIONS = ((search_and_open, 4), (ask, 1))


class SearchUser(ScenarioUser):
    edge_class = JsonEdge
    wait_time = think_time(1.0, 3.0)
    tasks = weighted(SEARCH_ACTIONS)
