"""The suite's own guard: every test runs under a time limit, so one hang cannot use up CI's budget."""

from __future__ import annotations


def test_every_test_has_a_time_limit(request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is missing: make test installs it"
    assert 0 < float(request.config.getini("timeout")) <= 600
    assert request.node.get_closest_marker("timeout") is None  # the limit comes from the ini, not this test
