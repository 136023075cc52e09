"""The local simulation environment: topology, native launcher, scenarios and CLI.

Importing this package turns off gRPC's fork handlers for the process, before gRPC loads. The
launcher forks component processes (subprocess with a preexec_fn) while its readiness probes
have gRPC calls in flight; with the handlers on, grpcio restarts its poller in the child just
before exec, on an epoll descriptor subprocess has already closed, and the child aborts
(grpc/grpc#43055). Nothing here uses gRPC across a fork, so the handlers have nothing to do.
"""

import os
import sys

_FORK_SUPPORT_ENV = "GRPC_ENABLE_FORK_SUPPORT"
# gRPC reads the setting once, when it loads: too late if it loaded before this package did.
_chosen_before_grpc_loaded = _FORK_SUPPORT_ENV in os.environ or "grpc._cython.cygrpc" not in sys.modules
os.environ.setdefault(_FORK_SUPPORT_ENV, "false")
GRPC_FORK_HANDLERS_OFF = _chosen_before_grpc_loaded and os.environ[_FORK_SUPPORT_ENV].lower() in ("false", "0")
