"""The local simulation environment: topology, native launcher, scenarios and CLI."""
