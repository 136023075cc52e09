"""The platform's client library: one call shape over every way a client reaches the platform.

`clients.transports`: native gRPC, gRPC-Web and JSON through Envoy (unary and server streams,
and on native gRPC bidirectional streams, with the status, details and HTTP code each
transport can see); `clients.http_rules`: how a method's `google.api.http` rule turns a
request into an HTTP call and back; `clients.websocket`: the WebSocket endpoints, JSON frames,
the token carried as a browser carries it. Contract tests, system tests, scenarios, load
tests and the command lines all call the platform through it.
"""
