"""benchmarks/drill_commands.py: the drills' shared stack, tear-down and report steps."""

from __future__ import annotations

import pytest
import typer

from benchmarks.drill_commands import _drill_stack, _publish, _tear_down


class _Stack:
    def __init__(self, d):
        self.dir, self.downs = d, 0

    def down(self):
        self.downs += 1


def test_a_drill_stack_is_its_own_and_its_data_stays_only_after_a_failure(tmp_path, capsys):
    stack = _drill_stack(tmp_path, "ray")
    assert stack.dir.parent == tmp_path / "drills" and stack.dir.name.startswith("ray-")
    assert len({stack.config.kafka_port, stack.config.kafka_controller_port, stack.config.redis_port}) == 3
    for failed in (False, True):
        d = tmp_path / f"data-{failed}"
        d.mkdir()
        fake = _Stack(d)
        _tear_down(fake, failed)
        assert fake.downs == 1 and d.exists() == failed
    assert "logs kept in" in capsys.readouterr().err


def test_publish_prints_the_report_and_exits_1_for_a_failed_drill(tmp_path, capsys):
    md = tmp_path / "drill.md"
    md.write_text("# report\n")
    _publish({"x_errors": 0}, md, failed=False)
    assert "# report" in capsys.readouterr().out
    with pytest.raises(typer.Exit) as ei:
        _publish({"x_errors": 1}, md, failed=True)
    assert ei.value.exit_code == 1
