"""The accelerator configuration: one typed, self-validating object.

Every consumer derives what it needs from an :class:`AcceleratorConfig`: the compiler tiles to
its parallelism and buffer sizes, the RTL generator sizes its DSP chains and memories, the golden
simulator sizes its buffers, the performance model takes its throughputs, and the host checks a
build against a device by :meth:`AcceleratorConfig.config_hash`.

A configuration describes one *core*; ``cores`` copies run side by side, each with its own HBM
channels, synchronised by SYS instructions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AcceleratorConfig", "BufferSpec", "ConfigError", "PRESETS", "load_config", "preset",
]

#: N of N:16 block sparsity the format can express (16 is dense); see contract/weights.py.
SPARSITY_CODES_ALL = (2, 4, 8, 16)
#: Weight bit widths the block format can express.
WEIGHT_BITS_ALL = (2, 4, 8)
#: Weights and activations are grouped in 16x16 blocks everywhere (the paper's M of N:M).
BLOCK = 16


class ConfigError(ValueError):
    """An accelerator configuration is invalid; the message names the field and the value."""


@dataclass(frozen=True)
class BufferSpec:
    """One on-chip buffer: ``depth`` rows of ``width`` bytes (the port width the engines use)."""

    width: int
    depth: int

    @property
    def bytes(self) -> int:
        return self.width * self.depth


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one FlightLLM-style accelerator (per core unless noted).

    Attributes:
        name: A label; it takes part in the hash so two presets never collide.
        cores: Number of cores (about one per SLR); each runs its own instruction stream.
        mv_rows: DSP chains of the matrix engine (each works on its own 16-row output strip).
        mv_k: K elements per chain per cycle (the chain length in DSPs). MM (prefill) and MV
            (decode) run on the same chains: MM feeds ``macs_per_dsp`` token rows through
            each DSP's packed lanes, MV one (see :attr:`mm_macs_per_cycle`).
        dsp_group: DSPs per group in a chain; reduction nodes sit between groups. It must
            divide every supported sparsity N so an N:16 row maps onto whole groups.
        macs_per_dsp: INT8 MACs one DSP slice performs per cycle in MM mode: 2, the two
            activations packed into a DSP48E2's pre-adder (the only packing the chain builds).
        sparsity_codes: Supported N of N:16 block sparsity (16 means dense).
        weight_bits: Supported weight bit widths.
        sfu_lanes: Special-function unit elements per cycle.
        abuf: INT8 activation buffer.
        wbuf: Weight / KV-cache stream buffer (double-buffered by the compiler).
        rbuf: INT32 buffer: accumulators, residual stream, attention scores.
        pbuf: Parameter buffer: per-channel requantisation records, norm gains, RoPE tables.
        hbm_channels_per_core: HBM pseudo-channels each core streams from (one AXI master each).
        hbm_channel_bytes: Capacity of one HBM pseudo-channel.
        clock_mhz: Kernel clock.
        token_depth: Largest count a dependency-token counter holds.
        axi_data_bits: Data width of each HBM AXI master. 512 bits at 225 MHz carry an HBM
            pseudo-channel's full rate (its controller port is 256 bits at 450 MHz; the
            platform's interconnect converts); the LD/ST data paths move one beat per cycle, so
            this sets their rate. It may not exceed a buffer row. Narrower is cheaper in
            simulation.
        attn_block: Token block size of block-sparse prefill attention (sink and local band
            are whole blocks of this many tokens; a multiple of 16).
        mm_pair_group: Token pairs an MM serves with one read of its weights (1, 2, 4 or 8).
            Each chain holds a dequantised weight pass for one cycle per pair of the group and
            keeps that many banks of accumulators, so the weights cross the WBUF read port and
            the dequantisers once per group instead of once per pair. MV and results are
            unchanged; prefill, bound by that port, gets up to this many times faster.
        wbuf_read_ports: WBUF rows the matrix unit's weight readers get per cycle (1, 2 or
            4). Each further read port is a copy of the memory, as block RAM and UltraRAM
            give more read ports only by replication (every write goes to all copies), and
            chain ``c`` reads through port ``c mod wbuf_read_ports``. Decode, whose MVs
            stream every weight through these ports, is bound by them.
        ld_lanes: LD data paths per core (1, 2 or 4, at most ``hbm_channels_per_core``).
            Lane ``k`` moves the segments on the HBM channels ``c`` with ``c mod ld_lanes ==
            k``, side by side with the other lanes, and WBUF is that many banks of rows (row
            ``r`` in bank ``r mod ld_lanes``, each bank its own write port), so a load over
            several channels fills WBUF at up to ``ld_lanes`` rows per cycle. Segments of one
            LD on different channels must then not write the same buffer bytes (their order
            is not defined); the compiler never does. Decode, whose weights come in through
            the LD at a row per lane per cycle, is bound by it.
        dequant_words: 8-byte weight words each chain's dequantiser takes per cycle (1 or
            2). A dense 4-bit block is 17 words with its multipliers: at one word per cycle a
            32-slice chain gets a pass every other cycle, at two it is busy 8 cycles of 9.
            The chains' weight readers deliver that many words per cycle, so the WBUF read
            ports must carry ``mv_rows * dequant_words * 8`` bytes per cycle to keep up.
    """

    name: str
    cores: int
    mv_rows: int
    mv_k: int
    dsp_group: int
    macs_per_dsp: int
    sparsity_codes: tuple[int, ...]
    weight_bits: tuple[int, ...]
    sfu_lanes: int
    abuf: BufferSpec
    wbuf: BufferSpec
    rbuf: BufferSpec
    pbuf: BufferSpec
    hbm_channels_per_core: int
    hbm_channel_bytes: int
    clock_mhz: float
    token_depth: int = 255
    axi_data_bits: int = 256
    attn_block: int = 64
    mm_pair_group: int = 1
    wbuf_read_ports: int = 1
    ld_lanes: int = 1
    dequant_words: int = 1

    def __post_init__(self):
        # Normalise sequences so YAML lists and tuples compare and hash the same.
        object.__setattr__(self, "sparsity_codes", tuple(self.sparsity_codes))
        object.__setattr__(self, "weight_bits", tuple(self.weight_bits))
        for name in ("abuf", "wbuf", "rbuf", "pbuf"):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = _buffer_from_dict(name, value)
            object.__setattr__(self, name, value)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field and its value."""
        if not isinstance(self.name, str) or not self.name:
            _bad("name", self.name, "a non-empty string")
        for name, lo, hi in (
            ("cores", 1, 16), ("mv_rows", 1, 1024), ("mv_k", BLOCK, 4096), ("dsp_group", 1, 16),
            ("macs_per_dsp", 2, 2), ("sfu_lanes", 1, 256), ("hbm_channels_per_core", 1, 64),
            ("token_depth", 1, 65535),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                _bad(name, value, f"an integer in [{lo}, {hi}]")
        if self.mv_k % BLOCK:
            _bad("mv_k", self.mv_k, f"a multiple of the {BLOCK}-wide weight block")
        if not self.sparsity_codes or any(n not in SPARSITY_CODES_ALL for n in self.sparsity_codes):
            _bad("sparsity_codes", list(self.sparsity_codes),
                 f"a non-empty subset of {list(SPARSITY_CODES_ALL)}")
        if 16 not in self.sparsity_codes:
            _bad("sparsity_codes", list(self.sparsity_codes), "a list that includes 16 (dense)")
        for n in self.sparsity_codes:
            if n % self.dsp_group:
                _bad("dsp_group", self.dsp_group,
                     f"a divisor of every sparsity N (it does not divide N={n})")
        if not self.weight_bits or any(b not in WEIGHT_BITS_ALL for b in self.weight_bits):
            _bad("weight_bits", list(self.weight_bits),
                 f"a non-empty subset of {list(WEIGHT_BITS_ALL)}")
        for name in ("abuf", "wbuf", "rbuf", "pbuf"):
            spec = getattr(self, name)
            if not isinstance(spec, BufferSpec):
                _bad(name, spec, "a buffer {width, depth}")
            if spec.width < BLOCK or spec.width & (spec.width - 1):
                _bad(f"{name}.width", spec.width, f"a power of two >= {BLOCK} bytes")
            if not 1 <= spec.depth <= (1 << 24) // spec.width:
                _bad(f"{name}.depth", spec.depth,
                     "a row count that keeps the buffer within the ISA's 24-bit byte addresses")
        if self.rbuf.width % 4:
            _bad("rbuf.width", self.rbuf.width, "a multiple of 4 bytes (it holds INT32 words)")
        channel = self.hbm_channel_bytes
        if not isinstance(channel, int) or not (1 << 20) <= channel <= (1 << 32):
            _bad("hbm_channel_bytes", self.hbm_channel_bytes,
                 "an integer in [1 MiB, 4 GiB] (the ISA's 32-bit HBM byte addresses)")
        if self.axi_data_bits not in (32, 64, 128, 256, 512):
            _bad("axi_data_bits", self.axi_data_bits, "one of 32, 64, 128, 256, 512")
        if self.attn_block not in (16, 32, 64, 128, 256):
            _bad("attn_block", self.attn_block, "one of 16, 32, 64, 128, 256")
        if self.mm_pair_group not in (1, 2, 4, 8):
            _bad("mm_pair_group", self.mm_pair_group, "one of 1, 2, 4, 8")
        if self.wbuf_read_ports not in (1, 2, 4):
            _bad("wbuf_read_ports", self.wbuf_read_ports, "1, 2 or 4")
        if self.ld_lanes not in (1, 2, 4):
            _bad("ld_lanes", self.ld_lanes, "1, 2 or 4")
        if self.dequant_words not in (1, 2):
            _bad("dequant_words", self.dequant_words, "1 or 2")
        if self.ld_lanes > self.hbm_channels_per_core:
            _bad("ld_lanes", self.ld_lanes, f"at most hbm_channels_per_core "
                 f"({self.hbm_channels_per_core}): a lane moves the segments of its channels")
        if self.wbuf.depth % self.ld_lanes:
            _bad("ld_lanes", self.ld_lanes, f"a divisor of the WBUF depth ({self.wbuf.depth} "
                 "rows): WBUF has a bank of rows per lane")
        if not isinstance(self.clock_mhz, (int, float)) or not 1 <= self.clock_mhz <= 1000:
            _bad("clock_mhz", self.clock_mhz, "a number in [1, 1000]")

    # ------------------------------------------------------------------ derived values
    @property
    def dsps_per_core(self) -> int:
        """DSP slices in the matrix engine of one core: ``mv_rows`` chains of ``mv_k``."""
        return self.mv_rows * self.mv_k

    @property
    def dsps_total(self) -> int:
        return self.dsps_per_core * self.cores

    @property
    def mm_macs_per_cycle(self) -> int:
        """Dense INT8 MACs per cycle in MM mode, all cores: every DSP multiplies its weight by
        ``macs_per_dsp`` token rows at once (the packed lanes)."""
        return self.dsps_total * self.macs_per_dsp

    @property
    def mv_macs_per_cycle(self) -> int:
        """Dense INT8 MACs per cycle of the matrix-vector engine, all cores; N:16 sparsity
        multiplies the *useful* (dense-equivalent) rate by 16/N."""
        return self.mv_rows * self.mv_k * self.cores

    @property
    def groups_per_chain(self) -> int:
        return self.mv_k // self.dsp_group

    @property
    def hbm_channels_total(self) -> int:
        return self.hbm_channels_per_core * self.cores

    @property
    def onchip_bytes_per_core(self) -> int:
        return sum(getattr(self, b).bytes for b in ("abuf", "wbuf", "rbuf", "pbuf"))

    def buffer(self, name: str) -> BufferSpec:
        """The buffer spec by its ISA name (``"abuf"``, ``"wbuf"``, ``"rbuf"``, ``"pbuf"``)."""
        return getattr(self, name)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, ints, strs) that :meth:`from_dict` reads back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, BufferSpec):
                value = {"width": value.width, "depth": value.depth}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "configuration") -> AcceleratorConfig:
        """Build and validate a configuration; unknown or missing keys are errors naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        retired = sorted(set(data) & set(_RETIRED))
        if retired:
            raise ConfigError(f"{source}: field(s) {retired} no longer exist: {_RETIRED[retired[0]]}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; known: {sorted(names)}")
        required = {f.name for f in fields(cls)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"{source}: missing field(s) {missing}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    def config_hash(self) -> str:
        """A stable hash of every field (SHA-256 of the canonical JSON, first 16 hex digits).

        The host refuses a build whose hash differs from the device's.
        """
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def replace(self, **changes) -> AcceleratorConfig:
        return dataclasses.replace(self, **changes)


#: Fields of earlier versions, with what replaced them.
_RETIRED = dict.fromkeys(
    ("mm_m", "mm_n", "mm_k"),
    "MM runs on the matrix engine's mv_rows x mv_k DSP chains (macs_per_dsp token rows per "
    "DSP); remove the mm_* keys and size the engine with mv_rows and mv_k")


def _bad(name: str, value: Any, expected: str):
    raise ConfigError(f"field '{name}' = {value!r} is invalid: expected {expected}")


def _buffer_from_dict(name: str, value: dict) -> BufferSpec:
    if set(value) != {"width", "depth"}:
        _bad(name, value, "a mapping with exactly the keys 'width' and 'depth'")
    for key in ("width", "depth"):
        if not isinstance(value[key], int) or isinstance(value[key], bool):
            _bad(f"{name}.{key}", value[key], "an integer")
    return BufferSpec(width=value["width"], depth=value["depth"])


def _preset_tiny() -> AcceleratorConfig:
    # Small enough that a whole compiled toy model simulates in RTL in seconds to minutes,
    # while keeping every feature: packed DSPs, all sparsity codes and bit widths.
    return AcceleratorConfig(
        name="tiny", cores=1, mv_rows=4, mv_k=16, dsp_group=2,
        macs_per_dsp=2, sparsity_codes=(2, 4, 8, 16), weight_bits=(2, 4, 8), sfu_lanes=4,
        abuf=BufferSpec(16, 2048), wbuf=BufferSpec(16, 4096), rbuf=BufferSpec(64, 1024),
        pbuf=BufferSpec(16, 2048), hbm_channels_per_core=2, hbm_channel_bytes=1 << 28,
        clock_mhz=200.0, axi_data_bits=64, attn_block=16,
    )


def _preset_u280() -> AcceleratorConfig:
    # Two cores (of the card's three SLRs), each with 16 chains of 32 packed DSP48E2 (512 DSPs,
    # 1,024 INT8 MACs per cycle in MM mode). Sized by the estimate of the whole core (flightllm
    # hw resources): a core is about 450k LUTs, of which the chains and dequantisers are 170k;
    # the readers, writers, DMA and SFU around them are the rest, so three cores would need
    # ~113% of the LUTs the shell leaves and two take ~76%. More chains per core do not help
    # while the weights come through one 64-byte WBUF row per cycle (8 dequantiser words): the
    # performance model gives LLaMA2-7B the same times with 16, 24 or 32 chains.
    # Thirteen HBM pseudo-channels per core (6.5 GiB: OPT-6.7B at 4 bits needs more than 9) plus
    # the instruction master: 27 AXI masters (designs at 225 MHz close timing more reliably with
    # at most ~28), 512 bits wide so one LD moves a WBUF row per cycle. RBUF rows are 64 bytes (16 INT32, what the
    # output stage and the SFU move per cycle): 256-byte rows cost about a third of a core's
    # LUTs in the units' RBUF readers and writers. An MM reads its weights once per group of
    # four token pairs (mm_pair_group): prefill is bound by the WBUF port, and four banks of
    # accumulators per chain cost ~1.7k LUTs where they cut a 128-token prefill 2.6x. WBUF has
    # a second read port (wbuf_read_ports), a second copy of its 64 URAMs (416 of the card's
    # 960 in all): decode's MVs, which stream every weight through the read port, get twice
    # its rows, and decode becomes bound by the LD's one row per cycle instead. So the LD has
    # two lanes (ld_lanes), odd and even channels, each writing its own bank of WBUF's rows:
    # decode's weights come in at two rows per cycle, and the matrix engine binds again.
    return AcceleratorConfig(
        name="u280", cores=2, mv_rows=16, mv_k=32, dsp_group=2,
        macs_per_dsp=2, sparsity_codes=(2, 4, 8, 16), weight_bits=(2, 4, 8), sfu_lanes=16,
        abuf=BufferSpec(64, 16384), wbuf=BufferSpec(64, 32768), rbuf=BufferSpec(64, 16384),
        pbuf=BufferSpec(64, 8192), hbm_channels_per_core=13, hbm_channel_bytes=256 << 20,
        clock_mhz=225.0, axi_data_bits=512, mm_pair_group=4, wbuf_read_ports=2, ld_lanes=2,
    )


def _preset_u280_wide() -> AcceleratorConfig:
    # The u280 preset with the three widths decode needs together (docs/performance.md, the
    # ladder): dequantisers of two words per cycle, four WBUF read ports (four copies of its
    # URAMs) and four LD lanes on WBUF's four banks. The performance model gives LLaMA2-7B
    # 26.6 tokens/s at KV 512 against u280's 14.8; the resource estimate puts it at ~98 % of
    # the LUTs the shell leaves, before place and route and with the units around the chains
    # counted, not synthesised: a design to study, not one expected to close timing as is.
    return dataclasses.replace(_preset_u280(), name="u280-wide", dequant_words=2,
                               wbuf_read_ports=4, ld_lanes=4)


def _preset_vhk158() -> AcceleratorConfig:
    # Three cores (four, as in the FlightLLM artefact's model, need ~112% of the XCVH1582's
    # LUTs by the same estimate), 8 HBM2e pseudo-channels each, 16 chains of 32 DSPs per core,
    # sized as the u280 preset (the same WBUF ports and LD lanes, the same groups of four
    # token pairs).
    return AcceleratorConfig(
        name="vhk158", cores=3, mv_rows=16, mv_k=32, dsp_group=2,
        macs_per_dsp=2, sparsity_codes=(2, 4, 8, 16), weight_bits=(2, 4, 8), sfu_lanes=16,
        abuf=BufferSpec(64, 16384), wbuf=BufferSpec(64, 32768), rbuf=BufferSpec(64, 16384),
        pbuf=BufferSpec(64, 8192), hbm_channels_per_core=8, hbm_channel_bytes=1 << 30,
        clock_mhz=225.0, axi_data_bits=512, mm_pair_group=4, wbuf_read_ports=2, ld_lanes=2,
    )


PRESETS = {"tiny": _preset_tiny, "u280": _preset_u280, "u280-wide": _preset_u280_wide,
           "vhk158": _preset_vhk158}


def preset(name: str) -> AcceleratorConfig:
    """A named preset configuration (``tiny``, ``u280``, ``u280-wide``, ``vhk158``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown configuration preset {name!r}; "
                          f"presets: {sorted(PRESETS)}") from None


def load_config(spec: str | Path) -> AcceleratorConfig:
    """A preset name, or a path to a YAML/JSON file holding the fields."""
    if isinstance(spec, str) and spec in PRESETS:
        return preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"{spec!s}: neither a preset ({', '.join(sorted(PRESETS))}) nor a file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    return AcceleratorConfig.from_dict(data, source=str(path))
