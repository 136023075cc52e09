"""Load: Locust scenarios driving the stack through Envoy, and request-path benchmarks."""
