"""Board descriptions: every bundled board validates; bad files are refused naming the key."""

import copy

import pytest
import yaml

from flightllm.boards.registry import BOARD_DIR, list_boards, load_board
from flightllm.boards.schema import BoardError, parse_board
from flightllm.contract.config import AcceleratorConfig


def _u280():
    return yaml.safe_load((BOARD_DIR / "u280.yaml").read_text())


def test_bundled_boards_load_with_their_facts():
    assert set(list_boards()) >= {"u280", "u55c", "u50", "vhk158", "v80"}
    for name in list_boards():
        board = load_board(name)
        assert board.name == name
        assert isinstance(board.config(), AcceleratorConfig)
        assert all(board.available()[r] > 0 for r in ("dsp", "lut", "ff", "bram36", "uram"))
    u280 = load_board("u280")
    assert (u280.part, u280.family, u280.flow) == ("xcu280-fsvh2892-2L-e", "DSP48E2", "vitis")
    assert u280.platform == "xilinx_u280_gen3x16_xdma_1_202211_1"
    assert (u280.hbm.count, u280.hbm.bytes, u280.hbm.total_bytes) == (32, 256 << 20, 8 << 30)
    assert u280.ddr.count == 2 and u280.ddr.slr == (0, 1)
    assert u280.available()["lut"] == 1_303_680 - 108_000
    assert load_board("u55c").hbm.total_bytes == 16 << 30
    assert load_board("u50").config().cores == 1            # inline default configuration
    for versal in ("vhk158", "v80"):
        board = load_board(versal)
        assert (board.family, board.flow, board.platform) == ("DSP58", "vivado", None)
        assert board.hbm.total_bytes == 32 << 30 and board.hbm.ports == 2


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["hbm"].update(count="x"), "hbm.count: expected a positive integer, got 'x'"),
    (lambda d: d["hbm"].update(chanels=32), "hbm.chanels: unknown key"),
    (lambda d: d.update(colour="red"), "colour: unknown key"),
    (lambda d: d.pop("part"), "part: missing"),
    (lambda d: d.update(family="DSP48E1"), "family: expected one of DSP48E2, DSP58"),
    (lambda d: d["flow"].update(tool="quartus"), "flow.tool: expected one of vitis, vivado"),
    (lambda d: d["flow"].pop("platform"), "flow.platform: missing"),
    (lambda d: d["resources"].update(dsp=-1), "resources.dsp: expected an integer >= 0"),
    (lambda d: d["resources"].pop("uram"), "resources.uram: missing"),
    (lambda d: d["shell"].update(lut=2_000_000), "shell.lut: expected at most resources.lut"),
    (lambda d: d["ddr"].update(slr=[0, 5]), "ddr.slr: expected SLR indices in [0, 2]"),
    (lambda d: d["ddr"].update(slr=[0]), "ddr.slr: expected an SLR index or a list of 2"),
    (lambda d: d["clocks"].update(kernel_max_mhz=0), "clocks.kernel_max_mhz: expected a "
     "positive number"),
    (lambda d: d.update(default_config="nope"), "default_config: unknown configuration preset"),
    (lambda d: d.update(default_config={"name": "x"}), "default_config: missing field(s)"),
    (lambda d: d.update(hbm=None, ddr=None), "hbm: missing"),
])
def test_schema_names_the_bad_key(edit, message):
    data = copy.deepcopy(_u280())
    edit(data)
    with pytest.raises(BoardError) as err:
        parse_board(data, source="boards/u280.yaml")
    assert str(err.value).startswith("boards/u280.yaml: ")
    assert message in str(err.value)


@pytest.mark.parametrize("key, value", [
    ("name", "../etc"), ("name", "u280; rm -rf ~"), ("name", "U280"), ("part", "xc $(id)"),
    ("part", "x[exec ls]"), ("part", "a/b"), ("flow.platform", "p\nexec rm"),
    ("flow.platform", "../../p"), ("flow.platform", 'p"q'), ("default_config", "../tiny"),
])
def test_unsafe_strings_are_refused_where_they_are_read(key, value):
    data = copy.deepcopy(_u280())
    *parents, leaf = key.split(".")
    target = data
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(BoardError, match=rf"u280.yaml: {key}: expected"):
        parse_board(data, source="u280.yaml")


def test_user_board_file_and_unknown_name(tmp_path):
    data = _u280()
    data["name"] = "my_u280"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_board(str(path)).name == "my_u280"
    assert load_board(path).source == str(path)
    path.write_text("hbm: [unclosed")
    with pytest.raises(BoardError, match="not valid YAML"):
        load_board(str(path))
    with pytest.raises(BoardError, match=r"neither a board \(u280.*\) nor a board file"):
        load_board("no_such_board")
