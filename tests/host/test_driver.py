"""The driver on the golden device: same logits as the simulator called directly, the build
refused for another configuration, and kernel errors surfaced from the status register."""

import struct

import numpy as np
import pytest

from flightllm.contract.isa import Buffer, Instruction, Opcode, SysOp, encode, encode_program
from flightllm.contract.regmap import ErrorCode, axi_masters, register_map
from flightllm.host.build import BuildError
from flightllm.host.devices import GoldenDevice
from flightllm.host.driver import Driver, KernelError, KernelTimeout
from flightllm.host.session import Session

from .conftest import reference_logits

PROMPT = list(np.random.default_rng(1).integers(0, 256, 21))  # two prefill chunks of 16
DECODE = [7, 200, 13, 99]


@pytest.mark.parametrize("which", ["tiny_build", "tiny_build_2core"])
def test_logits_identical_to_direct_simulation(which, request):
    build = request.getfixturevalue(which)
    want_prefill, want_decode = reference_logits(build, PROMPT, DECODE)
    session = Session(build, GoldenDevice(build))
    np.testing.assert_array_equal(session.prefill(PROMPT).logits, want_prefill)
    got = np.array([session.decode(t).logits[0] for t in DECODE])
    np.testing.assert_array_equal(got, want_decode)
    assert session.position == len(PROMPT) + len(DECODE)
    # Two prefill runs (16 + 5 tokens), then one run per decode token.
    assert [(c.phase, c.seq, c.kv, c.pos) for c in session.counters] == [
        ("prefill", 16, 16, 0), ("prefill", 5, 21, 16),
        ("decode", 1, 22, 21), ("decode", 1, 23, 22), ("decode", 1, 24, 23), ("decode", 1, 25, 24)]


def test_greedy_tokens_match_reference(tiny_build):
    session = Session(tiny_build, GoldenDevice(tiny_build))
    got = [t for t, _ in session.generate([5, 6, 7], 5)]
    want = []
    prefill, _ = reference_logits(tiny_build, [5, 6, 7], [])
    want.append(int(np.argmax(prefill[-1])))
    for _ in range(5):
        _, dec = reference_logits(tiny_build, [5, 6, 7], want)
        want.append(int(np.argmax(dec[-1])))
    assert got == want


def test_counters_come_from_the_registers(tiny_build):
    session = Session(tiny_build, GoldenDevice(tiny_build))
    step = session.prefill([1, 2, 3]).counters
    functional = step.functional
    cfg = tiny_build.config
    for m in axi_masters(cfg)[1:]:
        phys = m.core * cfg.hbm_channels_per_core + m.channel
        assert step.port_bytes[m.name] == (functional.hbm_read_bytes[phys]
                                           + functional.hbm_write_bytes[phys])
    assert sum(step.port_bytes.values()) > 0
    assert step.cycles is None and step.busy == {}  # the golden model is untimed
    data = step.to_dict()
    assert data["instructions"] and data["phase"] == "prefill" and data["cycles"] is None


def test_build_for_another_configuration_is_refused(tiny_build):
    other = tiny_build.config.replace(clock_mhz=tiny_build.config.clock_mhz + 1)
    with pytest.raises(BuildError, match=rf"hash {tiny_build.manifest['config_hash']}.*"
                                         rf"hash {other.config_hash()}"):
        Driver(tiny_build, GoldenDevice(other))
    Driver(tiny_build, GoldenDevice(tiny_build.config))  # the build's own is accepted


def _program(*streams) -> bytes:
    return encode_program([list(s) for s in streams])


def _with_extra_word(program: bytes, word: int) -> bytes:
    """A one-core program file with ``word`` appended to its stream (the layout of
    encode_program: 32-byte header, then one u32 word count per core)."""
    (count,) = struct.unpack_from("<I", program, 32)
    return program[:32] + struct.pack("<I", count + 1) + program[36:] + struct.pack("<I", word)


def _ld(hbm_addr=0, **kw):
    return Instruction(Opcode.LD, buf=Buffer.ABUF, buf_addr=0, chan=0, hbm_addr=hbm_addr,
                       len=16, n1=1, n2=1, **kw)


def _run_bad(build, program, **regs):
    driver = Driver(build, GoldenDevice(build))
    driver.load_programs({"decode": program})
    with pytest.raises(KernelError) as info:
        driver.run("decode", seq=1, kv=1, pos=0, **regs)
    return info.value


def test_bad_word_is_a_decode_error_at_its_word(tiny_build):
    ok = _ld()
    err = _run_bad(tiny_build, _with_extra_word(_program([ok]), 0xF))
    assert err.code == ErrorCode.DECODE
    assert (err.core, err.word) == (0, len(encode(ok)))
    assert "DECODE (1)" in str(err) and "undecodable word 0x0000000f" in str(err)


def test_hbm_address_out_of_range_names_the_instruction(tiny_build):
    ok, bad = _ld(), _ld(hbm_addr=1 << 26)  # in the field's range, past the channel's buffer
    err = _run_bad(tiny_build, _program([ok, bad]))
    assert err.code == ErrorCode.ADDRESS
    assert (err.core, err.word) == (0, len(encode(ok)))
    assert "LD" in err.instruction and "hbm_addr=0x4000000" in str(err)


def test_deadlock_is_the_watchdog_timeout_code(tiny_build):
    stuck = _ld(wait=1 << Opcode.ST)
    err = _run_bad(tiny_build, _program([stuck]))
    assert err.code == ErrorCode.TIMEOUT and "waits for a token from ST" in str(err)


def test_leftover_tokens_and_disagreeing_cores(tiny_build, tiny_build_2core):
    leaky = _ld(release=1 << Opcode.ST)
    err = _run_bad(tiny_build, _program([leaky]))
    assert err.code == ErrorCode.TOKENS
    assert err.word == len(encode(leaky)) and "LD->ST: 1" in str(err)  # the end of the stream
    a = Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=1)
    b = Instruction(Opcode.SYS, sync_op=SysOp.BARRIER, sync_id=2)
    err = _run_bad(tiny_build_2core, _program([a], [b]))
    assert err.code == ErrorCode.SYNC


def test_pointer_into_the_wrong_bank_is_an_axi_error(tiny_build):
    driver = Driver(tiny_build, GoldenDevice(tiny_build))
    b = driver.buffers
    b["hbm00"], b["hbm01"] = b["hbm01"], b["hbm00"]
    with pytest.raises(KernelError, match="AXI") as info:
        driver.run("decode", seq=1, kv=1, pos=0)
    assert info.value.code == ErrorCode.AXI


def test_no_done_within_the_timeout(tiny_build):
    class Stuck(GoldenDevice):
        def wait(self, timeout_s):
            return False

    driver = Driver(tiny_build, Stuck(tiny_build), timeout_s=0.5)
    with pytest.raises(KernelTimeout, match=r"decode program .* within 0.5 s"):
        driver.run("decode", seq=1, kv=1, pos=0)


def test_arguments_are_in_the_registers_the_map_names(tiny_build_2core):
    build = tiny_build_2core
    device = GoldenDevice(build)
    driver = Driver(build, device)
    driver.run("decode", seq=1, kv=3, pos=2)
    rmap = register_map(build.config)
    regs = device.registers
    assert (regs["seq"], regs["kv"], regs["pos"]) == (1, 3, 2)
    for core in range(build.config.cores):
        assert regs[f"prog_offset_c{core}"] == driver.offsets["decode"][core]
        assert regs[f"prog_words_c{core}"] == len(driver.streams["decode"][core])
    for reg in rmap.arguments:
        if reg.kind == "pointer":
            assert regs[reg.name] == driver.buffers[reg.name].address
    assert device.read_register("ctrl") >> 1 & 1 == 1        # done ...
    assert device.read_register("ctrl") >> 1 & 1 == 0        # ... is clear-on-read
