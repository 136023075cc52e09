"""The chat service: retrieval-augmented conversations, answered from the chunks the vector
service finds in the spaces the asker can read, streamed with citations (see chat.proto)."""

VERSION = "1.0.0"
