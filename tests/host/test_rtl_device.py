"""The RTL device's plumbing: what it hands ``run_kernel`` and what it takes back.

``flightllm.sim.rtl.run_kernel`` simulates the RTL kernel (a Verilator build, then seconds per
run); the default tests put a stand-in with the same signature behind the device. It plays the
kernel from what it is given (the buffers by port, the arguments by register name, pointers as
offsets into their buffer) on the golden simulator, so tokens through it equal the golden
device's only if every buffer and argument the device passes, and every result it copies back,
is right. The real RTL runs in the slow test at the end.
"""

import numpy as np
import pytest

from flightllm.contract.regmap import CtrlBit, ErrorCode, axi_masters, register_map
from flightllm.host.devices import DeviceError, GoldenDevice, RtlDevice
from flightllm.host.driver import KernelError, KernelTimeout
from flightllm.host.session import Session
from flightllm.sim.golden import GoldenSimulator
from flightllm.sim.rtl import KernelRun, KernelRunError


class _Channels:
    """Simulator HBM over the given buffers: channel i is the i-th port's, from its pointer."""

    def __init__(self, cfg, buffers, args):
        self.ports = [m.name for m in axi_masters(cfg)[1:]]
        self.buffers, self.args, self.channels = buffers, args, len(self.ports)

    def read(self, ch, addr, n):
        at = self.args[self.ports[ch]] + addr
        return np.frombuffer(bytes(self.buffers[self.ports[ch]][at:at + n]), np.uint8).copy()

    def write(self, ch, addr, data):
        at = self.args[self.ports[ch]] + addr
        self.buffers[self.ports[ch]][at:at + len(data)] = bytes(data)


class StandIn:
    """A ``run_kernel`` with the RTL entry point's signature, recording each call."""

    def __init__(self, *, status=ErrorCode.NONE, done=True):
        self.calls, self.status, self.done = [], status, done

    def __call__(self, cfg, *, buffers, args, timeout_cycles):
        self.calls.append({"ports": sorted(buffers), "args": dict(args),
                           "timeout_cycles": timeout_cycles})
        bufs = {k: bytearray(v) for k, v in buffers.items()}
        if not self.done:  # what the simulation does when ap_done never comes
            raise KernelRunError(f"the kernel did not raise ap_done within {timeout_cycles} "
                                 "cycles")
        regs = {"ctrl": 1 << CtrlBit.DONE | 1 << CtrlBit.IDLE,
                "status": int(self.status), "error_core": 0, "error_word": 3}
        if self.status == ErrorCode.NONE:
            instr = bufs["instr"]
            streams = []
            for c in range(cfg.cores):
                at = args["instr"] + 4 * args[f"prog_offset_c{c}"]
                raw = bytes(instr[at:at + 4 * args[f"prog_words_c{c}"]])
                streams.append(list(np.frombuffer(raw, "<u4").astype(int)))
            sim = GoldenSimulator(cfg)
            sim.hbm = _Channels(cfg, bufs, args)
            counters = sim.run(streams, seq=args["seq"], kv=args["kv"], pos=args["pos"])
            cycles = sum(counters.instructions.values())
        else:
            cycles = 10
        return KernelRun(bufs, regs, cycles)


def test_tokens_through_the_rtl_plumbing_equal_golden(tiny_build_2core):
    build = tiny_build_2core
    stand_in = StandIn()
    rtl = Session(build, RtlDevice(build.config, run_kernel=stand_in, timeout_cycles=12345))
    gold = Session(build, GoldenDevice(build))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    want = [t for t, _ in gold.generate(prompt, 4)]
    got = [t for t, _ in rtl.generate(prompt, 4)]
    assert got == want
    call = stand_in.calls[0]
    rmap = register_map(build.config)
    assert call["ports"] == sorted(m.name for m in axi_masters(build.config))
    assert set(call["args"]) == {r.name for r in rmap.arguments}
    assert call["timeout_cycles"] == 12345
    assert all(call["args"][m.name] == 0 for m in axi_masters(build.config))  # buffer starts
    # The cycles register is the simulation's; the phase/length registers are per step.
    assert [c.cycles for c in rtl.counters] == [
        sum(c.functional.instructions.values()) for c in gold.counters]
    assert [(c["args"]["seq"], c["args"]["kv"]) for c in stand_in.calls] == [
        (8, 8), (1, 9), (1, 10), (1, 11), (1, 12)]


def test_error_status_from_the_rtl(tiny_build):
    device = RtlDevice(tiny_build.config, run_kernel=StandIn(status=ErrorCode.ADDRESS))
    with pytest.raises(KernelError, match="ADDRESS") as info:
        Session(tiny_build, device).prefill([1, 2])
    assert (info.value.core, info.value.word) == (0, 3)


def test_no_done_in_the_cycle_budget_is_a_timeout(tiny_build):
    device = RtlDevice(tiny_build.config, run_kernel=StandIn(done=False), timeout_cycles=99)
    with pytest.raises(KernelTimeout, match="did not raise ap_done within 99 cycles"):
        Session(tiny_build, device).prefill([1, 2])


def test_missing_rtl_simulation_is_named(tiny_build, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "flightllm.sim.rtl", None)
    with pytest.raises(DeviceError, match="flightllm.sim.rtl.run_kernel"):
        RtlDevice(tiny_build.config)
    RtlDevice(tiny_build.config, run_kernel=StandIn())  # a given one needs no import


@pytest.mark.slow
@pytest.mark.rtl
def test_bundled_model_same_tokens_on_rtl_and_golden(tmp_path):
    """The real RTL simulation (not the stand-in): `flightllm run` on the bundled model."""
    import json

    from click.testing import CliRunner

    from flightllm.default_model import default_model_path
    from flightllm.host.cli import run_command
    pytest.importorskip("flightllm.sim.rtl", reason="the RTL kernel simulation is not here yet")
    from .conftest import compile_tiny
    build = compile_tiny(tmp_path / "b", model=default_model_path())
    tokens = {}
    for device in ("golden", "rtl"):
        r = CliRunner().invoke(run_command, [str(build.path), "--prompt-ids", "1,2,3",
                                             "--max-new-tokens", "3", "--device", device,
                                             "--json"])
        assert r.exit_code == 0, r.output
        tokens[device] = json.loads(r.output)["tokens"]
    assert tokens["rtl"] == tokens["golden"] and len(tokens["golden"]) == 3
