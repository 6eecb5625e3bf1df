"""The kernel register map: Vitis ap_ctrl_hs layout, no overlaps, one port per HBM channel."""

import pytest

from flightllm.contract.config import PRESETS, preset
from flightllm.contract.regmap import (
    CtrlBit, ErrorCode, axi_masters, channel_port, register_map,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_registers_do_not_overlap_and_are_aligned(name):
    regs = sorted(register_map(preset(name)), key=lambda r: r.offset)
    for a, b in zip(regs, regs[1:]):
        assert a.offset + a.bits // 8 <= b.offset, (a, b)
    for r in regs:
        assert r.offset % (r.bits // 8) == 0, r


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_vitis_control_block_and_arguments(name):
    cfg = preset(name)
    rmap = register_map(cfg)
    assert [rmap[n].offset for n in ("ctrl", "gie", "ier", "isr")] == [0, 4, 8, 12]
    args = rmap.arguments
    assert args[0].offset == 0x10 and args[0].name == "instr"
    # Every AXI master has exactly one pointer argument of its name (Vitis binds them by name).
    pointers = {r.name for r in args if r.kind == "pointer"}
    assert pointers == {m.name for m in axi_masters(cfg)}
    assert len(axi_masters(cfg)) == 1 + cfg.cores * cfg.hbm_channels_per_core
    assert rmap.size >= max(r.offset for r in rmap) + 8
    assert rmap.size & (rmap.size - 1) == 0


def test_channel_names_are_global_and_distinct():
    cfg = preset("u280")
    names = {channel_port(c, ch, cfg) for c in range(cfg.cores)
             for ch in range(cfg.hbm_channels_per_core)}
    assert len(names) == 26 and "hbm00" in names and "hbm25" in names


def test_enums_are_stable():
    # The host and the RTL agree on these numbers; changing them is an interface change.
    assert [b.value for b in CtrlBit] == [0, 1, 2, 3]
    assert ErrorCode.NONE == 0 and ErrorCode.TIMEOUT == 6
    with pytest.raises(KeyError, match="no register 'nope'"):
        register_map(preset("tiny"))["nope"]
