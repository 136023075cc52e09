"""Locust scenario `mixed`: a day in the life across every service that runs, through Envoy's
JSON API. People browse their spaces, read notes, edit their own, search and open a hit, ask
questions, look at a space's canvas and move their card on it, in the weights below (about how
often each happens in a working day). Edits are re-indexed, so search runs beside indexing.
"""

from __future__ import annotations

from typing import Any

from loadtests.users.kit import JsonEdge, ScenarioUser, think_time, weighted
from loadtests.users.search import GET_DOCUMENT, ask, search_and_open
from services.api.canvas.v1 import canvas_pb2
from services.api.knowledge.v1 import knowledge_pb2

LIST_SPACES = "knowledge.v1.KnowledgeService/ListSpaces"
LIST_DOCUMENTS = "knowledge.v1.KnowledgeService/ListDocuments"
UPDATE_DOCUMENT = "knowledge.v1.KnowledgeService/UpdateDocument"
GET_CANVAS = "canvas.v1.CanvasService/GetCanvas"
PLACE_NODE = "canvas.v1.CanvasService/PlaceNode"
MOVE_NODE = "canvas.v1.CanvasService/MoveNode"


def browse(user: Any) -> None:
    """The list of spaces, then the notes of one of them."""
    spaces = user.edge.call("list spaces", LIST_SPACES, knowledge_pb2.ListSpacesRequest(page_size=50), user.token)
    if spaces is None or not spaces.spaces:
        return
    space = user.rng.choice(list(spaces.spaces))
    request = knowledge_pb2.ListDocumentsRequest(space_id=space.space_id, page_size=20)
    user.edge.call("list documents", LIST_DOCUMENTS, request, user.token)


def read(user: Any) -> None:
    space = user.rng.choice(user.load.manifest.spaces)
    if space.documents:
        document_id = user.rng.choice(sorted(space.documents))
        request = knowledge_pb2.GetDocumentRequest(space_id=space.space_id, document_id=document_id)
        user.edge.call("read document", GET_DOCUMENT, request, user.token)


def edit(user: Any) -> None:
    """Open one of the person's own notes and add a line to it (only its author edits a note,
    so edits do not conflict)."""
    own = user.load.manifest.documents_of(user.person_index)
    if not own:
        return
    space_id, document_id = user.rng.choice(own)
    request = knowledge_pb2.GetDocumentRequest(space_id=space_id, document_id=document_id)
    got = user.edge.call("open for edit", GET_DOCUMENT, request, user.token)
    if got is None:
        return
    document = got.document
    update = knowledge_pb2.UpdateDocumentRequest(
        space_id=space_id,
        document_id=document_id,
        expected_version=document.version,
        content=f"{document.content}\nUpdate {document.version + 1}: checked again, still accurate.",
    )
    user.edge.call("edit document", UPDATE_DOCUMENT, update, user.token)


def view_canvas(user: Any) -> None:
    space = user.rng.choice(user.load.manifest.spaces)
    user.edge.call("view canvas", GET_CANVAS, canvas_pb2.GetCanvasRequest(space_id=space.space_id), user.token)


def move_card(user: Any) -> None:
    """Move the person's card on their home space's canvas (placed on first use)."""
    card: canvas_pb2.Node | None = getattr(user, "card", None)
    x, y = user.rng.uniform(0, 1200), user.rng.uniform(0, 800)
    if card is None:
        home = user.load.manifest.spaces[user.person_index % len(user.load.manifest.spaces)]
        request = canvas_pb2.PlaceNodeRequest(space_id=home.space_id, label=user.person.name, x=x, y=y)
        placed = user.edge.call("place card", PLACE_NODE, request, user.token)
        if placed is not None:
            user.card = placed.node
        return
    move = canvas_pb2.MoveNodeRequest(
        space_id=card.space_id, node_id=card.node_id, x=x, y=y, expected_version=card.version
    )
    moved = user.edge.call("move card", MOVE_NODE, move, user.token)
    if moved is not None:
        user.card = moved.node


class MixedUser(ScenarioUser):
    edge_class = JsonEdge
    wait_time = think_time(1.0, 4.0)
    tasks = weighted(
        (
            (browse, 3),
            (read, 4),
            (edit, 1),
            (search_and_open, 3),
            (ask, 1),
            (view_canvas, 1),
            (move_card, 1),
        )
    )
