"""Load: Locust scenarios driving the stack through Envoy, and request-path benchmarks."""

# The benchmarks start processes while their gRPC clients run; simulations turns gRPC's fork
# handlers off, which only works before gRPC loads, so it is imported first.
import simulations  # noqa: F401
