"""Unit timing of the performance model: how many cycles one instruction keeps its unit busy.

All per-unit timing constants live in :class:`UnitTiming`, so calibrating the model against the
RTL (``flightllm.sim.rtl.run_kernel``) is a change of data, not of code. The defaults come from
the RTL unit benches recorded in docs/hw_datapath.md (``tiny``, no stalls):

* **Matrix engine** (MM, MV). Strip ``s`` of an instruction runs on chain ``s mod chains``, each
  chain behind its own dequantiser. A chain spends, per strip, one cycle per 8-byte word of the
  strip's code table, then per 16x16 block ``max(block_switch, header words) + max(value words,
  chain passes)``: header words are the group-multiplier word and the 4-bit indices (N words
  for N < 16), value words ``N * bits / 4``, passes ``16 N / mv_k``. The slowest chain sets the
  time; MM repeats the weights once per pair of token rows; the output stage writes one
  16-value row per cycle; every instruction pays the fill (chain ``mv_k + 8``, output stage,
  sequencer). This reproduces the ``mv_cycles`` bench (313 / 309 / 181 / 119 cycles for N = 16
  / 8 / 4 / 2, MM 594) within 1.5 %.
* **SFU** (MISC): the per-row cycle model of the SFU bench with ``nb = ceil(n / lanes)``; rows
  overlap, the pipeline latency is paid once.
* **LD / ST**: issue cycles, then the HBM model (sim/hbm_model.py), but no faster than the
  buffer's one row per cycle, nor than the engine's data path: it handles one segment at a
  time, one AXI beat per cycle, so the channels of a multi-channel LD take turns (their
  bytes add up at ``axi_data_bits / 8`` per cycle); an ST segment costs
  ``segment_overhead`` more, an LD segment at least ``segment_issue`` (the address
  generator's rate). The engine waits in DRAIN until every burst has returned, so
  the memory latency is paid by every transfer (one instruction in flight per queue).
* **Buffer ports**: each buffer serves one row read and one row write per cycle to all its
  clients (hw/bufport.py): an LD refilling WBUF does not slow the matrix engine's weight
  reads, but two readers (or two writers) of one buffer take turns (sim/perf.py reserves each
  instruction's port cycles in time order, per port).
* **SYS**: a barrier latency, GATHER bytes over the inter-core links.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flightllm.contract.config import AcceleratorConfig
from flightllm.contract.isa import Buffer, Instruction, MiscFunc, Opcode, OutMode, WeightBits
from flightllm.contract.params import REQUANT_RECORD_BYTES
from flightllm.contract.weights import WORD_BYTES

__all__ = ["UnitTiming", "MatrixCost", "matrix_cost", "misc_cycles", "buffer_port_cycles",
           "ld_lanes", "datapath_cycles", "sys_cycles"]


@dataclass(frozen=True)
class UnitTiming:
    """Every unit-timing constant of the model (cycles of the kernel clock unless noted).

    Attributes:
        chains: DSP chains per core (None: ``mv_rows``, the matrix engine's default).
        block_switch: Dequantiser cycles to select a block; a block with header words takes
            its first one in the same cycle, and the rest ``dequant_words`` per cycle (the
            configuration's; hw/dequant.py).
        chain_latency_extra: Chain pipeline beyond ``mv_k`` (a strip's result leaves
            ``mv_k + 8`` edges after its last pass: ``hw.dsp_chain.DSPChain.latency``, which a
            test keeps in step).
        output_stage: Output stage registers (A-D).
        matrix_issue: Sequencer and first-block cycles not covered above (calibrated so the
            fill matches the bench's 37-41 cycles at ``mv_k = 16``).
        mm_pair_switch: Extra cycles per additional token pair of an MM.
        output_rows_per_cycle: 16-value result rows the output stage takes per cycle.
        buffer_rows_per_cycle: Row requests of each direction one on-chip buffer serves per
            cycle. Each buffer has one arbiter taking one read and one write per cycle from
            all units (hw/bufport.py), so the matrix engine's weight readers have one WBUF row
            per cycle to themselves while LDs refill WBUF, and an LD writes at most one row
            per cycle whatever its channels deliver.
        sfu_latency: SFU issue to first result (9-cycle arithmetic pipeline and handshake).
        misc_issue: MISC cycles per instruction outside the SFU (hw/misc_unit.py): the field
            check, the ByteReaders' first rows through the buffer arbiters, the ChunkWriter's
            last write and ``done`` after the arbiter accepted it. Not derived cycle by cycle:
            the RTL's ``busy_c0_misc`` on the tiny LLaMA decode step (33 one-row MISCs) is
            15.5 cycles per instruction above the SFU bench's figures.
        sfu_drain: Row-pass pipeline drain ``D`` of the softmax and norm models.
        sfu_divider: Divider cycles per row statistic (``2 + ceil(q/2)``, q-bit quotient;
            18 is the worst case of a softmax reciprocal).
        softmax_extra, defer_extra, defer_divider_extra, rmsnorm_extra, layernorm_extra,
        rope_extra: The constant terms of the SFU bench's per-row model.
        queue_depth: Decoded instructions an opcode's FIFO holds before dispatch
            (``QUEUE_DEPTH`` in hw/core.py). Fetch decodes in program order and stops while
            the next instruction's FIFO is full, so a queue that lags holds up the others.
        decode_word: Decoder cycles per instruction word (one word per cycle, bindings
            included; hw/fetch.py).
        queue_latency: Cycles from the decoder's push to the FIFO presenting the head.
        transfer_issue: LD/ST cycles from start to the first request (dispatch, then the
            engine's IDLE -> CHECK -> SEGMENT -> BURST states, hw/transfer.py).
        transfer_drain: LD/ST cycles from the last beat to the queue seeing ``done``: the row
            writer's last partial row, the DRAIN state, the core's done handshake.
        segment_overhead: ST data-path cycles per segment beyond its beats: a cycle to pop
            the segment's descriptor, one to retire it, a row read at its end (hw/dma.py; the
            RTL's busy counters give 2.6 per ST segment on the tiny builds). An LD lane loads
            the next segment's descriptor in the cycle its segment ends, so its segments cost
            their beats only, but no less than ``segment_issue``.
        segment_issue: Cycles the address generator takes per segment (check, descriptor,
            burst: hw/transfer.py): an LD of segments of 1 to 4 beats moves one per 4 cycles
            on the DMA bench (tests/hw/test_dma.py).
        token_latency: Cycles from a release to the waiting queue seeing the token.
        barrier: A SYS instruction's cross-core handshake (cores sit in different SLRs).
        gather_bytes_per_cycle: Bytes a core receives per cycle during a GATHER.
        ld_lanes: LD lanes, each moving the segments of its own channels and writing its
            own bank of WBUF (a row per lane per cycle; the other buffers have one write
            port). ``None`` (the default) is the configuration's ``ld_lanes``, what the RTL
            builds (1 or 2); a number overrides it, as a what-if of the performance study
            (bench/estimate_full_size.py).
        mm_pairs_per_weight_read: Token pairs one pass over an MM's weights serves; ``None``
            (the default) is the configuration's ``mm_pair_group``, what the RTL builds (each
            chain holds a weight pass for one cycle per pair of a group, with a bank of
            accumulators per pair). A number overrides it, as a what-if.
    """

    chains: int | None = None
    block_switch: int = 1
    chain_latency_extra: int = 8
    output_stage: int = 4
    matrix_issue: int = 10
    mm_pair_switch: int = 9
    output_rows_per_cycle: int = 1
    buffer_rows_per_cycle: int = 1
    sfu_latency: int = 10
    misc_issue: int = 15
    sfu_drain: int = 11
    sfu_divider: int = 18
    softmax_extra: int = 2
    defer_extra: int = 12
    defer_divider_extra: int = 10
    rmsnorm_extra: int = 5
    layernorm_extra: int = 8
    rope_extra: int = 3
    queue_depth: int = 2
    decode_word: int = 1
    queue_latency: int = 1
    transfer_issue: int = 4
    transfer_drain: int = 2
    segment_overhead: int = 3
    segment_issue: int = 4
    token_latency: int = 1
    barrier: int = 64
    gather_bytes_per_cycle: int = 64
    ld_lanes: int | None = None
    mm_pairs_per_weight_read: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MatrixCost:
    cycles: int
    macs_dense: int
    macs_stored: int
    weight_bytes: int
    #: Chain cycles summed over all chains' work: the engine time if the strips were spread
    #: evenly over every chain (the cost of instructions with fewer strips than chains).
    chain_work: int = 0
    #: Cycles of the WBUF port the weights need, and the fill the instruction pays once.
    port_cycles: int = 0
    fill: int = 0


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def matrix_cost(ins: Instruction, n_keep: int, cfg: AcceleratorConfig,
                t: UnitTiming) -> MatrixCost:
    """Cycles of one MM/MV (bindings resolved) whose blocks keep ``n_keep`` of 16 per row."""
    rows = 1 if ins.op == Opcode.MV else ins.m_rows
    strips, kb = ins.n_strips, ins.k_blocks
    if rows == 0 or strips == 0:
        return MatrixCost(0, 0, 0, 0)
    bits = WeightBits(ins.wbits).bits
    word, per = WORD_BYTES, cfg.dequant_words      # 8-byte words, taken per cycle
    values = _ceil(16 * n_keep * bits // 8, word)
    header = (1 if ins.gscale else 0) + (_ceil(8 * n_keep, word) if n_keep < 16 else 0)
    pairs = _ceil(rows, 2)
    # Weight reads: once per group of token pairs (mm_pair_group); every pair of a group
    # runs through each weight pass, so a block takes the longer of its value words and
    # the group's passes. The last group may be short.
    group = min(t.mm_pairs_per_weight_read or cfg.mm_pair_group, pairs)
    sizes = [group] * (pairs // group) + ([pairs % group] if pairs % group else [])
    reads = len(sizes)
    table = _ceil(kb, word) if ins.sparse else 0
    chains = t.chains or cfg.mv_rows

    # The dequantiser takes a block's first header word in the cycle that selects the block
    # and the rest ``per`` a cycle, so only a block without a header pays the switch on its
    # own; its value words come ``per`` a cycle too.
    lead = max(t.block_switch, 1 + _ceil(header - 1, per) if header else 0)
    value_cycles = _ceil(values, per)

    def strip_time(size: int) -> int:
        passes = max(16 * n_keep // cfg.mv_k, 1) * size
        if size == 1:
            return table + kb * (lead + max(value_cycles, passes))
        # A chain holding each pass for several pairs hides the dequantiser's block switch
        # (the engine bench: no bubble between blocks once the passes outlast the words).
        return table + kb * max(lead + value_cycles, passes)

    per_chain = sum(_ceil(strips, chains) * strip_time(size) for size in sizes)
    chain_time = per_chain + (reads - 1) * t.mm_pair_switch
    output_time = _ceil(rows * strips, t.output_rows_per_cycle)
    fill = cfg.mv_k + t.chain_latency_extra + t.output_stage + t.matrix_issue
    # A group starts once all its pairs' activations are in (one K block per cycle), and its
    # results (every row of every chain's last strip) leave after its last pass.
    # (Nothing beyond the calibrated fill when every group is one pair.)
    group_rows, pair_rows = rows - 2 * (pairs - sizes[-1]), rows - 2 * (pairs - 1)
    fill += ((sizes[0] - 1) * kb
             + (group_rows - pair_rows) * min(strips, chains) // t.output_rows_per_cycle)
    # Requantising results need a strip's 16 parameter records (128 bytes of PBUF). The unit
    # reads them one strip ahead, so when a round of chains finishes together each further
    # strip of the round waits for its PBUF read, less the rows the strip before it puts
    # out meanwhile (tiny MV: 8 rows of 16 bytes against 1; u280: 2 of 64, ~1 % of a
    # full-size MV; an MM's rows hide it). Measured on the matrix unit bench.
    # sum_rows reads a record set per row, and the reader holds one set: row 1's records of a
    # strip come only after row 0's are taken, so every set but the round's first waits, less
    # the one result row it meets (matrix unit bench, tiny: the summing MM costs 18 + 7.5
    # cycles a strip more than the MV, of which this gives 7 + 7 a strip; the rest is not
    # modelled, docs/performance.md).
    if ins.out_mode != OutMode.ACC32 and not ins.p_uniform:
        sets = 2 if ins.op == Opcode.MM and ins.sum_rows else 1
        exposed = (_ceil(16 * REQUANT_RECORD_BYTES, cfg.pbuf.width)
                   - _ceil(rows // sets, t.output_rows_per_cycle))
        fill += (sets * min(strips, chains) - 1) * max(exposed, 0)
    block_bytes = word * (header + values)
    weight_bytes = strips * (word * table + kb * block_bytes)
    # The weights of every read come through the WBUF read ports; chain c reads through
    # port c mod wbuf_read_ports, so fewer strips than ports leave some idle.
    ports = min(cfg.wbuf_read_ports, strips, chains)
    port_time = _ceil(reads * weight_bytes, cfg.wbuf.width * ports * t.buffer_rows_per_cycle)
    return MatrixCost(cycles=max(chain_time, output_time, port_time) + fill,
                      macs_dense=rows * 256 * strips * kb,
                      macs_stored=rows * 16 * n_keep * strips * kb,
                      weight_bytes=weight_bytes,
                      chain_work=sum(strips * strip_time(size) for size in sizes),
                      port_cycles=port_time, fill=fill)


def misc_cycles(ins: Instruction, cfg: AcceleratorConfig, t: UnitTiming) -> int:
    """Cycles of one MISC instruction (bindings resolved)."""
    m, n = ins.m, ins.n
    if m == 0 or n == 0:
        return 0
    lanes = cfg.sfu_lanes
    nb = _ceil(n, lanes)
    func = MiscFunc(ins.func)
    if func == MiscFunc.SOFTMAX:
        nbo = _ceil(_ceil(n, 16) * 16, lanes)
        if ins.defer:
            row = max(nbo + t.defer_extra, t.sfu_divider + t.defer_divider_extra)
        else:
            row = nb + nbo + t.sfu_drain + t.sfu_divider + t.softmax_extra
    elif func == MiscFunc.RMSNORM:
        row = nb + t.sfu_drain + t.sfu_divider + t.rmsnorm_extra
    elif func == MiscFunc.LAYERNORM:
        row = nb + t.sfu_drain + 2 * t.sfu_divider + t.layernorm_extra
    elif func == MiscFunc.ROPE:
        offset = 1 if ins.interleaved else max(ins.group // 2, 1)
        row = nb + _ceil(offset, lanes) + t.rope_extra
    else:  # element-wise: one beat of `lanes` elements per cycle
        row = nb
    return m * row + t.sfu_latency + t.misc_issue


def ld_lanes(cfg: AcceleratorConfig, t: UnitTiming) -> int:
    """The LD lanes the model runs: the timing's what-if, else the configuration's."""
    return max(t.ld_lanes if t.ld_lanes is not None else cfg.ld_lanes, 1)


def buffer_port_cycles(ins: Instruction, cfg: AcceleratorConfig, t: UnitTiming) -> int:
    """Cycles an LD/ST needs of its buffer's port: one row per cycle, every segment of every
    channel at least one row (bindings resolved). An LD's lanes (``ld_lanes``) write WBUF's
    banks side by side; the other buffers have one write port."""
    width = cfg.buffer(Buffer(ins.buf).name.lower()).width
    nch = max(ins.nch, 1) if ins.op == Opcode.LD else 1
    rows = _ceil(ins.buf_addr % width + ins.len, width) if ins.n1 * ins.n2 == 1 \
        else _ceil(ins.len, width)
    banks = min(ld_lanes(cfg, t), nch) if ins.buf == Buffer.WBUF else 1
    return _ceil(ins.n1 * ins.n2 * _ceil(nch, banks) * rows, t.buffer_rows_per_cycle)


def datapath_cycles(ins: Instruction, cfg: AcceleratorConfig, t: UnitTiming) -> int:
    """Cycles of an LD/ST's data path: every channel's segments one after another, one AXI
    beat per cycle: an ST segment ``segment_overhead`` more, an LD segment at least
    ``segment_issue`` (bindings resolved). A transposing LD also sends its last 16x16 tile
    out after its last beat (the transposer holds one tile while it takes the next:
    hw/rowio.py)."""
    if ins.len <= 0 or ins.n1 <= 0 or ins.n2 <= 0:
        return 0
    beat = cfg.axi_data_bits // 8
    nch = max(ins.nch, 1) if ins.op == Opcode.LD else 1
    # Each lane takes its share of the channels; the lanes run side by side.
    segments = ins.n1 * ins.n2 * _ceil(nch, ld_lanes(cfg, t))
    if ins.op == Opcode.ST:
        return segments * (_ceil(ins.len, beat) + t.segment_overhead)
    drain = _ceil(256, beat) if ins.transpose else 0
    return segments * max(_ceil(ins.len, beat), t.segment_issue) + drain


def sys_cycles(received_bytes: int, t: UnitTiming) -> int:
    """Cycles of a SYS collective in which a core receives ``received_bytes``."""
    return t.barrier + _ceil(received_bytes, t.gather_bytes_per_cycle)
