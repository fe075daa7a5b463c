import pytest

pytest_plugins = ["fixtures.neon_fixtures"]

_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def report_figure():
    """Record a line (a count, a measurement) to print at the end of the run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
