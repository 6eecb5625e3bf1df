"""``flightllm boards``: the list, its JSON, a user's file, and a clean error exit."""

import json

import yaml
from click.testing import CliRunner

from flightllm.boards.cli import boards_command
from flightllm.boards.registry import BOARD_DIR, list_boards


def test_list_and_json():
    result = CliRunner().invoke(boards_command, [])
    assert result.exit_code == 0
    for name in list_boards():
        assert name in result.output
    result = CliRunner().invoke(boards_command, ["--json"])
    assert result.exit_code == 0
    boards = json.loads(result.output)
    assert [b["name"] for b in boards] == list_boards()
    u280 = next(b for b in boards if b["name"] == "u280")
    assert u280["hbm"]["count"] == 32 and u280["flow"] == "vitis"


def test_user_file_and_errors(tmp_path):
    data = yaml.safe_load((BOARD_DIR / "u50.yaml").read_text())
    data["name"] = "lab_u50"
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(boards_command, [str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["name"] == "lab_u50"
    data["hbm"]["count"] = "x"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(boards_command, [str(path)])
    assert result.exit_code == 1
    assert f"{path}: hbm.count: expected a positive integer, got 'x'" in result.output
