"""The accelerator configuration validates, derives, round-trips and hashes stably."""

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from flightllm.contract.config import (
    PRESETS, AcceleratorConfig, BufferSpec, ConfigError, load_config, preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_yaml_and_json(name, tmp_path):
    cfg = preset(name)
    assert AcceleratorConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert AcceleratorConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for suffix, text in ((".yaml", cfg.to_yaml()), (".json", cfg.to_json())):
        path = tmp_path / f"c{suffix}"
        path.write_text(text)
        loaded = load_config(path)
        assert loaded == cfg and loaded.config_hash() == cfg.config_hash()


def test_hashes_are_distinct_and_stable():
    hashes = {name: preset(name).config_hash() for name in PRESETS}
    assert len(set(hashes.values())) == len(hashes)
    # Field order in the input does not matter; a changed value does.
    data = preset("tiny").to_dict()
    shuffled = dict(reversed(list(data.items())))
    assert AcceleratorConfig.from_dict(shuffled).config_hash() == hashes["tiny"]
    assert preset("tiny").replace(clock_mhz=201.0).config_hash() != hashes["tiny"]


def test_u280_uses_packed_dsps_within_the_card():
    cfg = preset("u280")
    assert cfg.macs_per_dsp == 2
    assert cfg.dsps_total == 2 * 16 * 32 <= 9024
    # Thirteen channels per core plus one instruction master: within the ~28 masters that
    # close timing.
    assert cfg.hbm_channels_total + 1 <= 28


@pytest.mark.parametrize("field,value,needle", [
    ("cores", 0, "field 'cores' = 0"),
    ("mv_k", 24, "field 'mv_k' = 24"),
    ("macs_per_dsp", 4, "field 'macs_per_dsp' = 4"),
    ("dsp_group", 3, "field 'dsp_group' = 3"),
    ("sparsity_codes", (2, 4, 8), "includes 16"),
    ("sparsity_codes", (3, 16), "field 'sparsity_codes'"),
    ("weight_bits", (3,), "field 'weight_bits'"),
    ("abuf", BufferSpec(24, 16), "field 'abuf.width' = 24"),
    ("rbuf", BufferSpec(64, 1 << 20), "field 'rbuf.depth'"),
    ("hbm_channel_bytes", 1 << 33, "field 'hbm_channel_bytes'"),
    ("clock_mhz", 0, "field 'clock_mhz' = 0"),
    ("wbuf_read_ports", 3, "field 'wbuf_read_ports' = 3"),
    ("ld_lanes", 8, "field 'ld_lanes' = 8"),
    ("ld_lanes", 4, "at most hbm_channels_per_core (2)"),   # tiny has two channels
    ("dequant_words", 4, "field 'dequant_words' = 4"),
])
def test_validation_names_field_and_value(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        preset("tiny").replace(**{field: value})


def test_four_read_ports_and_lanes_are_accepted_with_four_channels():
    cfg = preset("tiny").replace(hbm_channels_per_core=4, ld_lanes=4, wbuf_read_ports=4)
    assert (cfg.ld_lanes, cfg.wbuf_read_ports) == (4, 4)


def test_file_errors_name_the_file_and_key(tmp_path):
    data = preset("tiny").to_dict()
    data["mv_rowz"] = 4
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown field\(s\) \['mv_rowz'\]"):
        load_config(path)
    del data["mv_rowz"], data["cores"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"missing field\(s\) \['cores'\]"):
        load_config(path)
    # A configuration written for the retired MM array says what replaced it.
    path.write_text(yaml.safe_dump({**preset("tiny").to_dict(), "mm_n": 48}))
    with pytest.raises(ConfigError, match=r"\['mm_n'\] no longer exist: MM runs on the"):
        load_config(path)
    path.write_text("cores: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path)
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(tmp_path / "absent.yaml")
    data = preset("tiny").to_dict()
    data["abuf"] = {"width": 16}
    with pytest.raises(ConfigError, match="field 'abuf'"):
        AcceleratorConfig.from_dict(data)


@given(st.sampled_from(sorted(PRESETS)), st.integers(1, 16), st.sampled_from([1, 8, 64]))
def test_derived_values_follow_the_fields(name, cores, rows):
    cfg = preset(name).replace(cores=cores, mv_rows=rows)
    assert cfg.dsps_per_core == rows * cfg.mv_k
    assert cfg.mm_macs_per_cycle == 2 * cfg.mv_macs_per_cycle == 2 * rows * cfg.mv_k * cores
    assert cfg.dsps_total == cfg.dsps_per_core * cores
    assert cfg.hbm_channels_total == cfg.hbm_channels_per_core * cores
    assert cfg.groups_per_chain * cfg.dsp_group == cfg.mv_k


def test_u280_wide_is_u280_with_the_three_decode_widths():
    wide, base = preset("u280-wide").to_dict(), preset("u280").to_dict()
    changed = {k: (base[k], wide[k]) for k in base if base[k] != wide[k]}
    assert changed == {"name": ("u280", "u280-wide"), "dequant_words": (1, 2),
                       "wbuf_read_ports": (2, 4), "ld_lanes": (2, 4)}
