"""Every RPC of every built service has contract tests for success and for each documented
error; the services not built yet are listed as pending."""

from __future__ import annotations

from contracts.coverage import built_grpc_services, coverage, load_suites


def test_every_rpc_of_a_built_service_has_its_contract_tests() -> None:
    report = coverage(built_grpc_services(), load_suites())
    print("\n" + report.render())
    assert report.complete, "contract tests missing:\n" + report.render()
