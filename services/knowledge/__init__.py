"""The knowledge service: spaces, memberships and roles, documents and their versions (see
knowledge.proto). It is the platform's permission authority."""

VERSION = "1.0.0"
