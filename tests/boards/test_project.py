"""The rendered vendor project: every board renders, scripts parse, connectivity follows the
register map, output is deterministic, and names cannot escape or inject."""

import dataclasses
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest

from flightllm.boards.project import render_project
from flightllm.boards.registry import list_boards, load_board
from flightllm.boards.schema import BoardError
from flightllm.contract.config import preset
from flightllm.contract.regmap import axi_masters, register_map

from .kernel_stub import real_kernel_verilog, stub_verilog
from .tcl_check import check_tcl, tclsh_unavailable_reason

#: Vivado/Vitis commands the generated Tcl may call (a typo shows up as a new name).
VENDOR_COMMANDS = {
    "add_files", "assign_bd_address", "close_project", "connect_bd_intf_net", "connect_bd_net",
    "create_bd_cell", "create_bd_design", "create_project", "current_fileset",
    "current_project", "file", "get_bd_addr_segs", "get_bd_addr_spaces", "get_bd_intf_pins",
    "get_bd_pins", "get_files", "get_property", "get_runs", "launch_runs", "make_wrapper",
    "package_xo", "save_bd_design", "set_property", "update_compile_order",
    "validate_bd_design", "wait_on_run", "ipx::associate_bus_interfaces",
    "ipx::check_integrity", "ipx::create_xgui_files", "ipx::current_core",
    "ipx::edit_ip_in_project", "ipx::get_user_parameters", "ipx::package_project",
    "ipx::remove_user_parameter", "ipx::save_core", "ipx::unload_core", "ipx::update_checksums",
}
TCL_ARGV = {"package_kernel.tcl": ["out/flightllm.xo", "work"],
            "create_project.tcl": ["work", "project"]}


def render(name, cfg=None, kernel="flightllm"):
    board = load_board(name)
    cfg = cfg or board.config()
    return board, cfg, render_project(board, cfg, kernel_name=kernel,
                                      verilog=stub_verilog(cfg, kernel))


def write(files, root: Path) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.mark.parametrize("name", list_boards())
def test_every_board_renders_its_project(name):
    board, cfg, files = render(name)
    common = {"README.md", "project.json", "Makefile", "src/flightllm.v"}
    flow_files = ({"kernel.xml", "package_kernel.tcl", "link.cfg"} if board.flow == "vitis"
                  else {"create_project.tcl"})
    assert set(files) == common | flow_files
    for path in files:
        pure = PurePosixPath(path)
        assert not pure.is_absolute() and ".." not in pure.parts
    readme = files["README.md"].decode()
    assert board.part in readme and cfg.config_hash() in readme and "make" in readme


def test_rendering_twice_is_byte_identical():
    for name in list_boards():
        assert render(name)[2] == render(name)[2]
    # A different configuration changes the project (the comparison can fail).
    assert render("u280", preset("tiny"))[2] != render("u280")[2]


@pytest.mark.skipif(tclsh_unavailable_reason() is not None, reason="tclsh is not installed")
@pytest.mark.parametrize("name", list_boards())
def test_generated_tcl_parses_and_calls_only_vendor_commands(name, tmp_path):
    files = render(name)[2]
    scripts = [p for p in files if p.endswith(".tcl")]
    assert scripts
    for rel in scripts:
        path = tmp_path / rel
        path.write_bytes(files[rel])
        called = check_tcl(path, TCL_ARGV[rel], tmp_path)
        assert called <= VENDOR_COMMANDS, called - VENDOR_COMMANDS
        assert {"create_project", "set_property"} <= called


@pytest.mark.skipif(tclsh_unavailable_reason() is not None, reason="tclsh is not installed")
def test_tcl_check_catches_broken_scripts(tmp_path):
    files = render("u280")[2]
    text = files["package_kernel.tcl"].decode()
    broken = tmp_path / "broken.tcl"
    broken.write_text(text.replace("set_property top", "set_propery top"))
    assert "set_propery" in check_tcl(broken, TCL_ARGV["package_kernel.tcl"], tmp_path)
    broken.write_text(text.replace("foreach parameter [", "foreach parameter {["))
    with pytest.raises(AssertionError, match="INCOMPLETE|ERROR"):
        check_tcl(broken, TCL_ARGV["package_kernel.tcl"], tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("name", ["u280", "vhk158"])
def test_makefiles_parse_and_check_the_target(name, tmp_path):
    board, _, files = render(name)
    root = write(files, tmp_path)

    def make(*args):
        return subprocess.run(["make", "-n", *args], cwd=root, capture_output=True, text=True,
                              timeout=60)

    result = make()
    assert result.returncode == 0, result.stderr
    if board.flow == "vitis":
        assert "v++ --link --target hw" in result.stdout
        assert f"--platform {board.platform}" in result.stdout
        assert "package_kernel.tcl" in result.stdout
        emu = make("TARGET=hw_emu")
        assert emu.returncode == 0 and "emconfigutil" in emu.stdout
        bad = make("TARGET=sw_emu")
        assert bad.returncode != 0 and "TARGET must be hw or hw_emu" in bad.stderr
    else:
        assert "create_project.tcl -tclargs build_dir.vhk158 build" in result.stdout


@pytest.mark.parametrize("cfg_name", ["tiny", "u280"])
def test_kernel_xml_is_the_register_map(cfg_name):
    cfg = preset(cfg_name)
    files = render("u280", cfg)[2]
    kernel = ET.fromstring(files["kernel.xml"]).find("kernel")
    assert kernel.get("name") == "flightllm" and kernel.get("hwControlProtocol") == "ap_ctrl_hs"
    regmap = register_map(cfg)
    args = kernel.find("args").findall("arg")
    assert [a.get("name") for a in args] == [r.name for r in regmap.arguments]
    ports = {m.name: m for m in axi_masters(cfg)}
    for arg, reg in zip(args, regmap.arguments):
        assert int(arg.get("offset"), 16) == reg.offset
        assert int(arg.get("size"), 16) == reg.bits // 8
        if reg.kind == "pointer":
            assert arg.get("addressQualifier") == "1"
            assert arg.get("port") == ports[reg.name].port
        else:
            assert (arg.get("addressQualifier"), arg.get("port")) == ("0", "s_axi_control")
    xml_ports = {p.get("name"): p for p in kernel.find("ports").findall("port")}
    assert int(xml_ports["s_axi_control"].get("range"), 16) == regmap.size
    for m in axi_masters(cfg):
        assert int(xml_ports[m.port].get("dataWidth")) == m.data_bits


@pytest.mark.parametrize("name", ["u280", "u55c", "u50"])
def test_link_cfg_gives_every_master_its_own_pseudo_channel(name):
    board, cfg, files = render(name)
    text = files["link.cfg"].decode()
    sp = re.findall(r"^sp=flightllm_1\.(\w+):HBM\[(\d+)\]$", text, re.M)
    assert sorted(arg for arg, _ in sp) == sorted(m.name for m in axi_masters(cfg))
    banks = [int(b) for _, b in sp]
    assert len(set(banks)) == len(banks) and max(banks) < board.hbm.count
    assert f"kernel_frequency={cfg.clock_mhz:g}" in text
    assert "nk=flightllm:1:flightllm_1" in text
    # One core: the compute unit goes to the HBM's SLR; several: left to the placer.
    tiny = render(name, preset("tiny"))[2]["link.cfg"].decode()
    assert "slr=flightllm_1:SLR0" in tiny
    if cfg.cores > 1:
        assert "slr=" not in text.replace("No slr=", "")
    else:
        assert "slr=flightllm_1:SLR0" in text


def test_vivado_block_design_links_each_master_once():
    _, cfg, files = render("vhk158")
    text = files["create_project.tcl"].decode()
    links = re.findall(r"connect_bd_intf_net \[get_bd_intf_pins kernel_0/(m_axi_\w+)\] "
                       r"\[get_bd_intf_pins hbm_noc/(HBM\d+_AXI)\]", text)
    assert sorted(p for p, _ in links) == sorted(m.port for m in axi_masters(cfg))
    targets = re.findall(r"CONFIG.CONNECTIONS \{(HBM\d+_PORT\d)", text)
    assert len(targets) == len(links) == len(set(targets))
    assert "xcvh1582-vsva3697-2MP-e-S" in text and "versal_cips" in text


@pytest.mark.parametrize("kernel", ["../evil", "a/b", "k;rm", "k$(id)", "k[exec ls]", "K",
                                    "k\nexec", "", "k" * 40])
def test_unsafe_kernel_names_are_refused(kernel):
    cfg = preset("tiny")
    with pytest.raises(BoardError, match="kernel name"):
        render_project(load_board("u280"), cfg, kernel_name=kernel,
                       verilog=stub_verilog(cfg, "flightllm"))


def test_unsafe_strings_from_outside_the_schema_are_refused():
    cfg = preset("tiny")
    verilog = stub_verilog(cfg)
    board = load_board("u280")
    with pytest.raises(BoardError, match="configuration name"):
        render_project(board, cfg.replace(name="x\nexec rm -rf ~"), verilog=verilog)
    # A Board built by hand bypasses the schema; the template layer still refuses.
    for field, value in (("part", "xcu280 [exec rm -rf ~]"), ("platform", "p;rm"),
                         ("part", "a\nb")):
        evil = dataclasses.replace(board, **{field: value})
        with pytest.raises(BoardError, match="refusing to write"):
            render_project(evil, cfg, verilog=verilog)


def test_kernel_ports_are_checked_against_the_register_map():
    cfg = preset("tiny")
    board = load_board("u280")
    with pytest.raises(BoardError, match="port m_axi_hbm01_rlast is missing"):
        render_project(board, cfg, verilog=stub_verilog(cfg, drop="m_axi_hbm01_rlast"))
    with pytest.raises(BoardError, match="no module 'flightllm' .modules: other"):
        render_project(board, cfg, verilog=stub_verilog(cfg, "other"))
    wide = stub_verilog(cfg).replace("[63:0] m_axi_hbm00_wdata", "[127:0] m_axi_hbm00_wdata")
    with pytest.raises(BoardError, match="m_axi_hbm00_wdata has 128 bits, expected 64"):
        render_project(board, cfg, verilog=wide)
    # The kernel for another configuration lacks this one's ports.
    from flightllm.contract.regmap import register_map
    bits = (register_map(preset("u280")).size - 1).bit_length()
    assert bits > 8
    with pytest.raises(BoardError, match="kernel 'flightllm': port s_axi_control_awaddr has 8 "
                       f"bits, the register map decodes {bits}"):
        render_project(board, preset("u280"), verilog=stub_verilog(cfg))


def _lint(path: Path, top: str) -> subprocess.CompletedProcess:
    from flightllm.hw.sim_runner import verilator_lint
    return verilator_lint(path, top=top)


def _verilator_reason():
    from flightllm.hw.sim_runner import simulator_unavailable_reason
    return simulator_unavailable_reason()


@pytest.mark.rtl
def test_project_verilog_passes_verilator_lint(tmp_path):
    if _verilator_reason():
        pytest.skip(_verilator_reason())
    root = write(render("u280", preset("tiny"))[2], tmp_path)
    assert _lint(root / "src" / "flightllm.v", "flightllm").returncode == 0
    broken = tmp_path / "broken.v"
    broken.write_text(stub_verilog(preset("tiny")).replace("endmodule", ""))
    assert _lint(broken, "flightllm").returncode != 0         # negative control


@pytest.mark.slow
@pytest.mark.rtl
def test_real_kernel_renders_and_lints(tmp_path):
    """The kernel top from flightllm.hw.kernel (about 25 s to generate for tiny, 40 s lint)."""
    if _verilator_reason():
        pytest.skip(_verilator_reason())
    cfg = preset("tiny")
    verilog = real_kernel_verilog(cfg)
    if verilog is None:
        pytest.skip("flightllm.hw.kernel.kernel_verilog does not exist yet")
    for name in list_boards():
        files = render_project(load_board(name), cfg, verilog=verilog)
        assert files["src/flightllm.v"] == verilog.encode()
    files = render_project(load_board("u280"), cfg, verilog=verilog)
    assert ET.fromstring(files["kernel.xml"]).find("kernel").get("interrupt") == "true"
    root = write(files, tmp_path)
    result = _lint(root / "src" / "flightllm.v", "flightllm")
    assert result.returncode == 0, result.stderr[-2000:]
    # With the DSP48E2 primitive (what UltraScale+ projects get), linted against an empty
    # DSP48E2 with the ports and parameters the slices use.
    from flightllm.hw.dsp48e2 import lint_stub
    from flightllm.hw.kernel import kernel_verilog
    primitive = tmp_path / "primitive.v"
    primitive.write_text(lint_stub() + kernel_verilog(cfg, dsp_impl="xilinx"))
    result = _lint(primitive, "flightllm")
    assert result.returncode == 0, result.stderr[-2000:]
