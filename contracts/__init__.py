"""Contracts: per-proto contract suites, code generation and breaking-change checks."""
