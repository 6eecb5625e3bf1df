# amaranth: UnusedElaboratable=no
"""The DSP chain on AMD's DSP48E2 simulation model against the same chain on the twin.

One Verilator design holds ``DSPChain(tiny, dsp_impl="xilinx")`` (on the UNISIM model of the
primitive) and the ``"twin"`` chain on the same inputs; ``tests/hw/cocotb/tb_dsp_unisim.py``
checks after every clock edge that each of the 16 slices' P and every chain output agree bit
for bit. That covers all the chain drives into a slice: OPMODE ``P = M`` / ``P = PCIN + M``
switched per pass, INMODE ``D + A``, ALUMODE sum, C = 0, the PCOUT -> PCIN cascade, the constant
clock enable, the reset (also mid-pass). A slice pair covers the rest of what the twin claims
(every supported OPMODE, INMODE, ALUMODE; a toggling clock enable). A wrong primitive parameter
(``AMULTSEL="A"``) and one flipped bit must fail.

The model is not in this repository (vendor code). Point ``FLIGHTLLM_UNISIM`` at a folder that
holds ``DSP48E2.v``: a Vivado install's ``data/verilog/src/unisims`` or a checkout of the public
(Apache-2.0) XilinxUnisimLibrary's ``verilog/src/unisims``; otherwise the tests skip::

    FLIGHTLLM_UNISIM=/path/to/unisims pytest -m slow tests/hw/test_dsp48e2_unisim.py

What Verilator needs beyond the project's usual options (see :func:`build_pair`): a ``glbl``
module (the model reads ``glbl.GSR``; ours holds it low and is instantiated in the top so the
upward reference resolves), ``--no-timing`` (the model has ``#1`` delays; ``--timing`` with
``-CFLAGS -fcoroutines`` gives the same results, slower), and a copy of the model without its
``=== 1'bz`` tests of undriven pins (Verilator cannot put tristate logic on an input port; every
pin here is driven, so those tests are always false).
"""

import os
import re
from pathlib import Path

import pytest
from amaranth import Instance, Module, signed
from amaranth.back import verilog
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from flightllm.contract.config import preset
from flightllm.hw.dsp48e2 import DSP48E2
from flightllm.hw.dsp_chain import (
    DSPChain, act_beat_layout, result_beat_layout, weight_beat_layout,
)
from flightllm.hw.sim_runner import CocotbBuild, build_verilog

REPO = Path(__file__).resolve().parents[2]
UNISIM_ENV = "FLIGHTLLM_UNISIM"
MODULE = "tb_dsp_unisim"
#: Options the UNISIM model needs on top of VERILATOR_ARGS.
UNISIM_ARGS = ("--no-timing",)
#: Our stand-in for Vivado's glbl.v: global set/reset never asserted (the chain resets the
#: slices through their RST pins).
GLBL = "module glbl;\n  wire GSR = 1'b0;\nendmodule\n"
#: The model's pull-up / pull-down of undriven pins: ``(X === 1'bz) || `` and ``(X !== 1'bz) && ``.
Z_TEST = re.compile(r"\(\s*\w+(?:\s*\[\d+\])?\s*[!=]==\s*1'b[zZ]\s*\)\s*(?:\|\||&&)\s*")


def _unisim_dir() -> Path | None:
    folder = os.environ.get(UNISIM_ENV)
    return Path(folder) if folder and (Path(folder) / "DSP48E2.v").is_file() else None


pytestmark = [
    pytest.mark.slow, pytest.mark.rtl,
    pytest.mark.skipif(_unisim_dir() is None, reason=f"set {UNISIM_ENV} to a folder holding "
                       "AMD's UNISIM DSP48E2.v (Vivado data/verilog/src/unisims or the public "
                       "XilinxUnisimLibrary) to simulate the DSP48E2 primitive"),
]


def two_state_model(text: str) -> str:
    """The UNISIM DSP48E2 model without its tests for undriven (``z``) pins."""
    out, count = Z_TEST.subn("", text)
    left = len(re.findall(r"1'b[zZ]", out))
    if count == 0 or left:
        raise ValueError(f"DSP48E2.v: {count} pin z-tests removed, {left} left; the model's "
                         "layout is not the one this test knows")
    return out


class TwinAndPrimitive(wiring.Component):
    """Two chains of ``config`` on the same inputs: ``weights``/``acts``/``results`` are the
    primitive chain's (``xil``), ``twin_*`` the twin chain's outputs (``twin``)."""

    def __init__(self, config):
        self.twin = DSPChain(config, dsp_impl="twin")
        self.xil = DSPChain(config, dsp_impl="xilinx")
        super().__init__({
            "weights": In(stream.Signature(weight_beat_layout(config.mv_k))),
            "acts": In(stream.Signature(act_beat_layout())),
            "results": Out(stream.Signature(result_beat_layout())),
            "twin_weights_ready": Out(1), "twin_acts_ready": Out(1),
            "twin_results_valid": Out(1), "twin_results_payload": Out(result_beat_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.glbl = Instance("glbl")       # the model's glbl.GSR resolves upwards here
        m.submodules.twin = twin = self.twin
        m.submodules.xil = xil = self.xil
        for chain in (twin, xil):
            for port in ("weights", "acts"):
                m.d.comb += [getattr(chain, port).valid.eq(getattr(self, port).valid),
                             getattr(chain, port).payload.eq(getattr(self, port).payload)]
            m.d.comb += chain.results.ready.eq(self.results.ready)
        m.d.comb += [self.weights.ready.eq(xil.weights.ready), self.acts.ready.eq(xil.acts.ready),
                     self.results.valid.eq(xil.results.valid),
                     self.results.payload.eq(xil.results.payload),
                     self.twin_weights_ready.eq(twin.weights.ready),
                     self.twin_acts_ready.eq(twin.acts.ready),
                     self.twin_results_valid.eq(twin.results.valid),
                     self.twin_results_payload.eq(twin.results.payload)]
        return m


class SlicePair(wiring.Component):
    """One primitive slice and one twin slice on the same inputs (DSP48E2's input ports)."""

    INPUTS = ("a", "b", "c", "d", "pcin", "opmode", "inmode", "alumode", "ce")

    def __init__(self):
        shapes = DSP48E2().signature.members
        super().__init__({**{name: In(shapes[name].shape) for name in self.INPUTS},
                          "p_twin": Out(signed(48)), "p_xil": Out(signed(48))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.glbl = Instance("glbl")
        for impl, out in (("twin", self.p_twin), ("xilinx", self.p_xil)):
            dsp = m.submodules[impl] = DSP48E2(impl=impl)
            m.d.comb += [getattr(dsp, port).eq(getattr(self, port)) for port in self.INPUTS]
            m.d.comb += out.eq(dsp.p)
        return m


def build_pair(unisim: Path, design, *, name: str, patch=None) -> CocotbBuild:
    """Verilate ``design`` with the UNISIM model under ``sim_build/<name>`` (reused while sources
    and options are unchanged). ``patch`` = (old, new) replaces every ``old`` in the generated
    Verilog (the negative control's wrong parameter)."""
    text = verilog.convert(design, name=name, emit_src=False)   # stable across edits here
    if patch:
        assert patch[0] in text, patch
        text = text.replace(*patch)
    extra = {"glbl.v": GLBL, "DSP48E2.v": two_state_model((unisim / "DSP48E2.v").read_text())}
    return build_verilog(text, name=name, build_dir=REPO / "sim_build" / name,
                         extra_sources=extra, extra_args=UNISIM_ARGS)


@pytest.fixture(scope="module")
def pair(rtl_sim):
    return build_pair(_unisim_dir(), TwinAndPrimitive(preset("tiny")), name="dsp_unisim_tiny")


def test_reference_stream_agrees_with_twin(rtl_sim, pair, tmp_path):
    out = rtl_sim.run(pair, MODULE, "reference_stream", tmp_path)
    assert out["ok"] and out["errors"] == 0 and out["checker_errors"] == 0, out
    assert out["count"] >= 1000 and out["cycles"] >= out["passes"], out
    assert out["values"] == out["cycles"] * out["signals"] and out["signals"] == 4 + 16, out
    assert out["nonzero_p"] > out["cycles"] * 16 // 2, out      # the slices were busy


def test_raw_random_with_resets_agrees_with_twin(rtl_sim, pair, tmp_path):
    out = rtl_sim.run(pair, MODULE, "raw_random", tmp_path)
    assert out["ok"] and out["errors"] == 0 and out["cycles"] >= 20000, out
    assert out["resets"] >= 50 and out["nonzero_p"] > out["cycles"] * 16 // 2, out


def test_lockstep_catches_one_flipped_bit(rtl_sim, pair, tmp_path):
    out = rtl_sim.run(pair, MODULE, "flipped_bit", tmp_path)
    assert out["tests"] == 1 and out["failed"] == 1 and out["errors"] == 1, out
    assert out["count"] == 2 and out["checker_errors"] == 0, out


def test_wrong_primitive_parameter_is_caught(rtl_sim, tmp_path):
    """AMULTSEL = "A" (the multiplier skips the pre-adder, dropping lane 0): must disagree."""
    broken = build_pair(_unisim_dir(), TwinAndPrimitive(preset("tiny")),
                        name="dsp_unisim_tiny_amultsel_a",
                        patch=('.AMULTSEL("AD")', '.AMULTSEL("A")'))
    out = rtl_sim.run(broken, MODULE, "reference_stream", tmp_path, FLIGHTLLM_TB_VECTORS=20)
    assert out["tests"] == 1 and out["failed"] == 1, out
    assert out["errors"] > 0 and out["checker_errors"] > 0, out


def test_single_slice_supported_modes_and_clock_enable(rtl_sim, tmp_path):
    build = build_pair(_unisim_dir(), SlicePair(), name="dsp_unisim_slice")
    out = rtl_sim.run(build, MODULE, "slice_random", tmp_path)
    assert out["ok"] and out["errors"] == 0 and out["cycles"] >= 20000, out
    assert (out["opmodes"], out["inmodes"], out["alumodes"]) == (280, 32, 4), out
    assert out["resets"] >= 50 and out["nonzero_p"] > out["cycles"] // 2, out
