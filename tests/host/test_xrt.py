"""The XRT device's plumbing against a recording stand-in for pyxrt (tests/host/fake_pyxrt.py):
argument order, memory groups, sync directions, and the same tokens as the golden device.
No board and no XRT are involved."""

import sys

import numpy as np
import pytest

from flightllm.contract.regmap import register_map
from flightllm.host.devices import DeviceError, GoldenDevice, XrtDevice
from flightllm.host.driver import KernelError, KernelTimeout
from flightllm.host.session import Session

from .fake_pyxrt import GROUP_BASE, SyncDir, make_pyxrt

PROMPT = [11, 22, 33, 44, 55]


@pytest.fixture
def xrt_session(tiny_build_2core, monkeypatch):
    build = tiny_build_2core
    log = []
    monkeypatch.setitem(sys.modules, "pyxrt", make_pyxrt(build.config, log))
    device = XrtDevice("kernel.xclbin", build.config, device_index=1)
    return Session(build, device, timeout_s=2.5), log


def test_same_tokens_and_logits_as_golden(xrt_session, tiny_build_2core):
    session, _ = xrt_session
    gold = Session(tiny_build_2core, GoldenDevice(tiny_build_2core))
    np.testing.assert_array_equal(session.prefill(PROMPT).logits, gold.prefill(PROMPT).logits)
    for token in (5, 250, 17):
        np.testing.assert_array_equal(session.decode(token).logits, gold.decode(token).logits)
    assert session.counters[-1].port_bytes == {k: v for k, v in
                                               gold.counters[-1].port_bytes.items()}


def test_opens_the_xclbin_and_the_kernel_exclusively(xrt_session):
    _, log = xrt_session
    assert log[0] == ("device", 1)
    assert log[1] == ("load_xclbin", "kernel.xclbin")
    kind, uuid, name, mode = log[2]
    assert (kind, uuid, name, mode.name) == ("kernel", "uuid-0", "flightllm", "exclusive")


def test_buffers_are_in_their_arguments_memory_groups(xrt_session, tiny_build_2core):
    session, log = xrt_session
    args = [r.name for r in register_map(tiny_build_2core.config).arguments]
    buffers = session.driver.buffers
    # One buffer per pointer argument, each in the group XRT gives for that argument's index.
    assert sorted(buffers) == sorted(r.name for r in register_map(
        tiny_build_2core.config).arguments if r.kind == "pointer")
    for port, buf in buffers.items():
        assert buf.handle.group == GROUP_BASE + args.index(port), port
        assert buf.address == buf.handle.address()
    # The manifest's images sit in the buffer of their (core, channel).
    for entry in tiny_build_2core.manifest["hbm"]:
        buf = session.driver.channel_buffer(entry["core"], entry["channel"])
        data = tiny_build_2core.file(entry["file"])
        assert bytes(buf.handle.host[:len(data)]) == data


def test_arguments_follow_the_register_maps_order(xrt_session, tiny_build_2core):
    session, log = xrt_session
    session.prefill(PROMPT)
    session.decode(9)
    rmap = register_map(tiny_build_2core.config)
    runs, current = [], None
    for entry in log:
        if entry[0] == "set_arg":
            current = current if current is not None else []
            current.append(entry[1:])
        elif entry[0] == "start":
            runs.append(current)
            current = None
    assert len(runs) == 2
    buffers = session.driver.buffers
    for run, (seq, kv, pos) in zip(runs, [(5, 5, 0), (1, 6, 5)]):
        assert [i for i, _ in run] == list(range(len(rmap.arguments)))
        for (index, value), reg in zip(run, rmap.arguments):
            if reg.kind == "pointer":
                assert value is buffers[reg.name].handle, reg.name
            else:
                assert isinstance(value, int), reg.name
        values = {reg.name: value for (_, value), reg in zip(run, rmap.arguments)}
        assert (values["seq"], values["kv"], values["pos"]) == (seq, kv, pos)
    assert ("wait", 2500) in log


def test_every_write_syncs_to_and_every_read_from_the_device(xrt_session, tiny_build_2core):
    session, log = xrt_session
    session.prefill(PROMPT)
    writes = reads = 0
    for i, entry in enumerate(log):
        if entry[0] == "write":
            _, bo, seek, size = entry
            assert log[i + 1] == ("sync", bo, SyncDir.XCL_BO_SYNC_BO_TO_DEVICE, seek, size)
            writes += 1
        elif entry[0] == "read":
            _, bo, skip, size = entry
            assert log[i - 1] == ("sync", bo, SyncDir.XCL_BO_SYNC_BO_FROM_DEVICE, skip, size)
            reads += 1
    # Images, the instruction buffer, each core's input rows; the logits read back.
    io = tiny_build_2core.io
    assert writes == len(tiny_build_2core.manifest["hbm"]) + 1 + len(io["input"])
    logits = {session.driver.channel_buffer(p["core"], p["channels"][0]).handle
              for p in io["logits"]}
    read_bos = {e[1] for e in log if e[0] == "read"}
    assert read_bos == logits and reads == len(logits)


def test_a_write_without_sync_is_caught_by_the_stand_in(tiny_build, monkeypatch):
    """Negative control: the stand-in's board only sees synced bytes."""
    log = []
    monkeypatch.setitem(sys.modules, "pyxrt", make_pyxrt(tiny_build.config, log))

    class NoSync(XrtDevice):
        def write(self, buf, offset, data):
            buf.handle.write(data, offset)

    gold = Session(tiny_build, GoldenDevice(tiny_build)).prefill(PROMPT).logits
    try:
        got = Session(tiny_build, NoSync("k.xclbin", tiny_build.config)).prefill(PROMPT).logits
    except KernelError:
        return
    assert not np.array_equal(got, gold)


def test_without_xrt_the_error_names_pyxrt(tiny_build, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # makes `import pyxrt` fail
    with pytest.raises(DeviceError, match="pyxrt"):
        XrtDevice("k.xclbin", tiny_build.config)


@pytest.mark.parametrize("state,error", [("ERT_CMD_STATE_TIMEOUT", KernelTimeout),
                                         ("ERT_CMD_STATE_ERROR", DeviceError)])
def test_run_states_other_than_completed(tiny_build, monkeypatch, state, error):
    module = make_pyxrt(tiny_build.config, [])
    monkeypatch.setitem(sys.modules, "pyxrt", module)
    monkeypatch.setattr(module.run, "wait", lambda self, ms: module.ert_cmd_state[state])
    session = Session(tiny_build, XrtDevice("k.xclbin", tiny_build.config), timeout_s=0.25)
    with pytest.raises(error, match="within 0.25 s" if error is KernelTimeout else state):
        session.prefill([1, 2, 3])
