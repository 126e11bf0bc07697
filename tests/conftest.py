"""Shared test configuration: the ipckit leak guard runs around every test."""

pytest_plugins = ["ipckit.testing.plugin"]
