from typer.testing import CliRunner

import distill
from distill.cli import app


def test_version_and_losses_commands():
    runner = CliRunner()
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and distill.__version__ in result.output
    result = runner.invoke(app, ["losses"])
    assert result.exit_code == 0
    for name in distill.losses.__all__:
        assert name in result.output
