"""The auth service: users, credentials, sessions and token signing keys (see auth.proto)."""

VERSION = "1.0.0"
