"""Fit of a configuration on a board: resources with the shell reserved, banks, channel size,
clock; a misfit is refused with the numbers."""

import pytest

from flightllm.boards.connectivity import bind_masters
from flightllm.boards.fit import FitError, check_fit, require_fit
from flightllm.boards.registry import load_board
from flightllm.contract.config import preset
from flightllm.contract.regmap import axi_masters

SMALL = {"dsp": 100, "bram36": 10, "uram": 1, "ff": 10_000, "lut": 10_000}


def test_a_small_design_fits_and_reports_its_share():
    report = require_fit(load_board("u280"), preset("tiny"), usage=SMALL, method="given")
    assert report.fits and report.over == [] and report.problems == ()
    assert report.available["lut"] == 1_303_680 - 108_000
    assert report.utilisation_pct()["dsp"] == round(100 * 100 / 9024, 1)


def test_too_many_resources_are_refused_with_the_numbers():
    usage = {**SMALL, "ff": 5_705_961, "lut": 2_513_439}      # the u280 preset's count, today
    with pytest.raises(FitError) as err:
        require_fit(load_board("u280"), preset("u280"), usage=usage, method="given")
    text = str(err.value)
    assert "configuration 'u280' does not fit board 'u280'" in text
    assert "5,705,961" in text and "2,607,360" in text and "OVER by 3,098,601" in text
    assert "1,195,680" in text and "OVER by 1,317,759" in text      # LUTs free after the shell
    assert "--arch" in text
    assert err.value.report.over == ["ff", "lut"]
    # Negative control: the same usage one LUT below the limit passes the LUT check.
    edge = {**SMALL, "lut": 1_195_680}
    assert check_fit(load_board("u280"), preset("u280"), usage=edge).over == []


def test_memory_and_clock_limits_are_refused():
    u280 = load_board("u280")
    big = preset("u280").replace(name="big", cores=4, hbm_channels_per_core=8)   # 33 masters
    report = check_fit(u280, big, usage=SMALL)
    assert not report.fits and "33 AXI masters" in report.problems[0]
    assert "32 HBM pseudo-channels" in report.problems[0]
    wide = preset("tiny").replace(hbm_channel_bytes=1 << 30)
    assert "pseudo-channels hold 268,435,456 bytes" in check_fit(u280, wide,
                                                                  usage=SMALL).problems[0]
    fast = preset("tiny").replace(clock_mhz=400.0)
    assert "at most 300 MHz" in check_fit(u280, fast, usage=SMALL).problems[0]
    # Versal: two NoC ports per pseudo-channel take the 33rd master.
    assert check_fit(load_board("vhk158"), preset("vhk158"), usage=SMALL).fits


@pytest.mark.parametrize("name", ["u280", "u55c", "u50"])
def test_every_master_has_its_own_pseudo_channel_on_vitis_boards(name):
    board = load_board(name)
    cfg = board.config()
    bindings = bind_masters(board, cfg)
    assert sorted(b.master.name for b in bindings) == sorted(m.name for m in axi_masters(cfg))
    assert len({b.bank for b in bindings}) == len(bindings)
    assert all(b.memory == "HBM" and b.slr == 0 and b.port == 0 for b in bindings)


@pytest.mark.slow
def test_counted_estimate_of_the_boards_default_configuration():
    """The real counted estimate (about 35 s for u280): prints the verdict for the record."""
    board = load_board("u280")
    report = check_fit(board, board.config())
    print(report.summary())
    assert set(report.used) == {"dsp", "bram36", "uram", "ff", "lut"}
    if not report.fits:
        with pytest.raises(FitError, match="does not fit board 'u280'"):
            require_fit(board, board.config(), usage=report.used)
