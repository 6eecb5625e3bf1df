"""The Vitis kernel top: port names, LD/ST/SYS programs bit-identical to the golden simulator
under AXI back-pressure, and malformed programs that end in an error status and ap_done.

The RTL runs use the small build without the MM/MV and MISC units (``execution_units=False``;
the first run Verilates it, a few minutes, later runs reuse the cached build). Two-core GATHER,
the watchdog and token-balance cases are marked slow (the first needs a second build); whole
compiled models are in test_kernel_models.py (slow).
"""

import random
import re

import numpy as np
from amaranth.hdl import Shape
import pytest

from flightllm.contract.config import preset
from flightllm.contract.isa import Buffer, Instruction, Opcode, SysOp, encode
from flightllm.contract.regmap import ErrorCode, axi_masters, register_map
from flightllm.hw.kernel import kernel_ports
from flightllm.hw.sim_runner import simulator_unavailable_reason

from .kernel_programs import (
    IMAGE_BYTES, golden_images, kernel_inputs, random_transfer_program, words_of,
)

CFG = preset("tiny")
WATCHDOG = 4096

rtl = pytest.mark.skipif(simulator_unavailable_reason() is not None,
                         reason=str(simulator_unavailable_reason()))


def _run(streams, images, lengths, **kw):
    from flightllm.sim.rtl import run_kernel
    buffers, args = kernel_inputs(CFG, streams, images, lengths)
    return run_kernel(CFG, buffers=buffers, args=args, execution_units=False,
                      watchdog_cycles=WATCHDOG, timeout_cycles=200_000, **kw)


def _images(rng):
    return {m.name: bytes(rng.getrandbits(8) for _ in range(IMAGE_BYTES))
            for m in axi_masters(CFG)[1:]}


def test_ports_are_vitis_names():
    ports = kernel_ports(CFG)
    assert {"ap_clk", "ap_rst_n", "interrupt"} <= set(ports)
    assert not [p for p in ports if "__" in p]
    for master in axi_masters(CFG):
        for member in ("awvalid", "awready", "awaddr", "awlen", "wdata", "wstrb", "wlast",
                       "bresp", "araddr", "arlen", "rdata", "rlast", "rvalid", "rready"):
            assert f"m_axi_{master.name}_{member}" in ports
        assert Shape.cast(ports[f"m_axi_{master.name}_wdata"].shape).width == master.data_bits
    width = register_map(CFG).address_bits
    assert Shape.cast(ports["s_axi_control_awaddr"].shape).width == width
    assert all(re.fullmatch(r"(ap_clk|ap_rst_n|interrupt|s_axi_control_\w+|m_axi_\w+)", p)
               for p in ports)


@rtl
@pytest.mark.parametrize("seed,stall", [pytest.param(1, 0.0, marks=pytest.mark.slow), (2, 0.3)])
def test_transfer_program_matches_golden(seed, stall):
    rng = random.Random(seed)
    lengths = {"seq": 2, "kv": 5, "pos": 3}
    prog = random_transfer_program(CFG, rng, pairs=8, lengths=lengths)
    images = _images(rng)
    streams = [words_of(prog)]
    want = golden_images(CFG, streams, images, lengths)
    assert want != images, "the program must change HBM (else the comparison is vacuous)"
    run = _run(streams, images, lengths, stall=stall, seed=seed)
    assert run.error == ErrorCode.NONE, run.registers
    for name, image in want.items():
        got = bytes(run.buffers[name])
        if got != image:
            diff = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(image, np.uint8))
            pytest.fail(f"{name}: {len(diff)} bytes differ from golden, first at {diff[0]:#x}")
    regs = run.registers
    assert regs["cycles"] > 0 and regs["busy_c0_ld"] > 0 and regs["busy_c0_st"] > 0
    assert regs["bytes_hbm00"] + regs["bytes_hbm01"] > 0


def _error_run(words, lengths=None):
    rng = random.Random(5)
    lengths = lengths or {"seq": 1, "kv": 1, "pos": 0}
    return _run([words], _images(rng), lengths)


@rtl
def test_bad_opcode_sets_decode_error_and_done():
    ld = encode(Instruction(Opcode.LD, buf=Buffer.ABUF, len=16, n1=1, n2=1))
    bad = 0x7  # opcode 7 does not exist
    run = _error_run(ld + [bad] + ld)
    assert run.error == ErrorCode.DECODE
    assert run.registers["error_word"] == len(ld)
    assert run.registers["error_core"] == 0


@rtl
def test_out_of_range_addresses_set_address_error():
    ok = encode(Instruction(Opcode.LD, buf=Buffer.ABUF, len=16, n1=1, n2=1))
    past_buffer = encode(Instruction(Opcode.LD, buf=Buffer.ABUF, buf_addr=CFG.abuf.bytes - 8,
                                     len=16, n1=1, n2=1))
    run = _error_run(ok + past_buffer)
    assert run.error == ErrorCode.ADDRESS
    assert run.registers["error_word"] == len(ok)
    past_hbm = encode(Instruction(Opcode.ST, buf=Buffer.ABUF, len=64, n1=1, n2=1,
                                  hbm_addr=CFG.hbm_channel_bytes - 32))
    run = _error_run(past_hbm)
    assert run.error == ErrorCode.ADDRESS and run.registers["error_word"] == 0


@rtl
@pytest.mark.slow
def test_missing_token_times_out_instead_of_hanging():
    # The LD waits for a token the ST never releases: a deadlock the watchdog must end.
    words = (encode(Instruction(Opcode.LD, wait=1 << Opcode.ST, buf=Buffer.ABUF, len=16, n1=1,
                                n2=1))
             + encode(Instruction(Opcode.ST, buf=Buffer.ABUF, len=16, n1=1, n2=1)))
    run = _error_run(words)
    assert run.error == ErrorCode.TIMEOUT
    assert run.registers["error_word"] == 0


@rtl
@pytest.mark.slow
def test_leftover_tokens_are_reported():
    words = encode(Instruction(Opcode.LD, release=1 << Opcode.ST, buf=Buffer.ABUF, len=16,
                               n1=1, n2=1))
    run = _error_run(words)
    assert run.error == ErrorCode.TOKENS


CFG2 = CFG.replace(cores=2)


def _gather_program(core: int, buf: Buffer, rows: int, width: int, stride: int) -> list:
    """Load this core's slice of ``rows`` rows, GATHER, store the whole gathered block."""
    own = 4 + core * width
    total = 2 * width
    return [
        Instruction(Opcode.LD, release=1 << Opcode.SYS, buf=buf, buf_addr=own, hbm_addr=64,
                    len=width, n1=rows, hbm_stride1=width + 3, buf_stride1=stride, n2=1),
        Instruction(Opcode.SYS, wait=1 << Opcode.LD, release=1 << Opcode.ST,
                    sync_op=SysOp.GATHER, sync_id=7, buf=buf, addr=own, len=width, rows=rows,
                    stride=stride),
        Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=8),
        Instruction(Opcode.ST, wait=1 << Opcode.SYS, buf=buf, buf_addr=4, hbm_addr=0x2000,
                    len=total, n1=rows, hbm_stride1=total, buf_stride1=stride, n2=1),
    ]


@rtl
@pytest.mark.slow
@pytest.mark.parametrize("buf,width", [(Buffer.ABUF, 23), (Buffer.RBUF, 40)])
def test_two_core_gather_matches_golden(buf, width):
    rng = random.Random(9)
    streams = [words_of(_gather_program(c, buf, rows=3, width=width, stride=100))
               for c in range(2)]
    images = {m.name: bytes(rng.getrandbits(8) for _ in range(IMAGE_BYTES))
              for m in axi_masters(CFG2)[1:]}
    lengths = {"seq": 1, "kv": 1, "pos": 0}
    want = golden_images(CFG2, streams, images, lengths)
    from flightllm.sim.rtl import run_kernel
    buffers, args = kernel_inputs(CFG2, streams, images, lengths)
    run = run_kernel(CFG2, buffers=buffers, args=args, execution_units=False,
                     watchdog_cycles=WATCHDOG, timeout_cycles=200_000, stall=0.2)
    assert run.error == ErrorCode.NONE, run.registers
    for name, image in want.items():
        assert bytes(run.buffers[name]) == image, name
    # Negative control: with a BARRIER in place of the GATHER each core's store would hold
    # only its own slice, so the comparison above does see the copied bytes.
    def barrier_only(c):
        return [i.replace(sync_op=SysOp.BARRIER, buf=0, addr=0, len=0, rows=0, stride=0)
                if i.op == Opcode.SYS else i for i in _gather_program(c, buf, 3, width, 100)]
    alone = golden_images(CFG2, [words_of(barrier_only(c)) for c in range(2)], images, lengths)
    assert alone != want
