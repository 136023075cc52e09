"""The vector service: document chunks, their embeddings and permission-filtered similarity
search (see vector.proto)."""

VERSION = "1.0.0"
