"""A recording stand-in for XRT's ``pyxrt`` module, with a board made of the golden device.

It offers the part of pyxrt's API the XRT device uses (device, load_xclbin, kernel with
group_id and read_register, bo with write/read/sync/address, run with set_arg/start/wait) and
records every call. Buffer objects keep a host copy and a device copy, as XRT's do: ``write``
and ``read`` touch the host copy, ``sync`` copies one way. The board runs the kernel on the
device copies (through the golden device's register-level emulation), so a missing or
wrongly directed sync changes the results. Memory group ``GROUP_BASE + i`` is the bank of the
kernel's i-th argument, as the xclbin's connectivity would say; a buffer allocated in another
group than the one its argument reaches is unreachable for the kernel (an AXI error).

This is not a board: it checks the host's use of the API, not XRT or the bitstream.
"""

import enum
import types

from flightllm.contract.regmap import register_map
from flightllm.host.devices import GoldenDevice

GROUP_BASE = 100


class SyncDir(enum.IntEnum):
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class CmdState(enum.IntEnum):
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_QUEUED = 2
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_ABORT = 6
    ERT_CMD_STATE_TIMEOUT = 9


def make_pyxrt(config, log: list):
    """A fake pyxrt module for a board whose kernel is built for ``config``; calls go to
    ``log`` as tuples."""
    rmap = register_map(config)
    args = rmap.arguments
    board = GoldenDevice(config)
    by_offset = {r.offset: r for r in rmap}
    addresses = iter(range(0x4000_0000, 1 << 40, 1 << 24))

    class device:
        def __init__(self, index):
            log.append(("device", index))

        def load_xclbin(self, path):
            log.append(("load_xclbin", path))
            return "uuid-0"

    class kernel:
        class cu_access_mode(enum.IntEnum):
            exclusive = 0
            shared = 1

        def __init__(self, dev, uuid, name, mode):
            log.append(("kernel", uuid, name, mode))

        def group_id(self, index):
            log.append(("group_id", index))
            return GROUP_BASE + index

        def read_register(self, offset):
            if offset in by_offset:
                value = board.read_register(by_offset[offset].name)
                return value & 0xFFFFFFFF
            reg = by_offset[offset - 4]  # the high word of a 64-bit register
            return board.read_register(reg.name) >> 32

    class bo:
        class flags(enum.IntEnum):
            normal = 0

        def __init__(self, dev, size, flags, group):
            port = args[group - GROUP_BASE].name
            self.size_, self.group = size, group
            self.host = bytearray(size)
            # The board side: a buffer in the bank the group designates.
            self.dev = board.allocate(port, size)
            self.addr = next(addresses)
            log.append(("bo", size, group, self))

        def address(self):
            return self.addr

        def write(self, data, seek):
            self.host[seek:seek + len(data)] = bytes(data)
            log.append(("write", self, seek, len(data)))

        def read(self, size, skip):
            import numpy as np
            log.append(("read", self, skip, size))
            return np.frombuffer(bytes(self.host[skip:skip + size]), np.int8)

        def sync(self, direction, size, offset):
            log.append(("sync", self, SyncDir(direction), offset, size))
            if direction == SyncDir.XCL_BO_SYNC_BO_TO_DEVICE:
                board.write(self.dev, offset, bytes(self.host[offset:offset + size]))
            else:
                self.host[offset:offset + size] = board.read(self.dev, offset, size)

    class run:
        def __init__(self, krn):
            self.args = {}

        def set_arg(self, index, value):
            log.append(("set_arg", index, value))
            self.args[index] = value

        def start(self):
            log.append(("start",))
            for index, value in self.args.items():
                board.write_register(args[index].name,
                                     value.dev if isinstance(value, bo) else value)
            board.start()

        def wait(self, timeout_ms):
            log.append(("wait", timeout_ms))
            return CmdState.ERT_CMD_STATE_COMPLETED if board.wait(0) else \
                CmdState.ERT_CMD_STATE_TIMEOUT

    module = types.ModuleType("pyxrt")
    module.device, module.kernel, module.bo, module.run = device, kernel, bo, run
    module.xclBOSyncDirection, module.ert_cmd_state = SyncDir, CmdState
    module.board = board
    return module
