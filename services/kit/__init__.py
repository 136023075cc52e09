"""The service runtime kit: the one way every service reads settings, serves gRPC, checks
tokens, maps errors, traces, talks to its stores and produces and consumes events."""
