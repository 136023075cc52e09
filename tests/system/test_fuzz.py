"""A bounded schemathesis run against the stack's Envoy (`python -m contracts.fuzz`): every
route of the running services with valid and invalid data, no server error, answers as
documented, invalid data refused, refused writes changing nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from simulations.endpoints import StackEndpoints


def test_the_json_api_survives_a_bounded_fuzz_run(stack: StackEndpoints) -> None:
    command = [sys.executable, "-m", "contracts.fuzz", "--max-examples", "3"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = [int(count) for count in re.findall(r"(\d+) generated, \1 passed", output)]
    assert len(generated) == 2, output[-3000:]  # every route, then the streaming ones
    assert sum(generated) >= 200, f"a bounded run is a few hundred cases, not {sum(generated)}"
    assert "fuzz: no failures" in output
