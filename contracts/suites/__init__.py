"""One contract suite per proto: every RPC through Envoy over gRPC, gRPC-Web and JSON, for
success and for each documented error, plus the events each service emits."""
