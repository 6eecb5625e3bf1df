"""The bundled default model: present in the package, what its record says, and compilable."""

from pathlib import Path

from flightllm.compiler.sources import load_model
from flightllm.default_model import default_model_info, default_model_path

REPO = Path(__file__).resolve().parents[1]


def test_bundled_model_is_the_recorded_export():
    info = default_model_info()
    # The provenance record points at the committed test export; the bytes are the same file.
    assert default_model_path().read_bytes() == \
        (REPO / "tests/models/onnx/llama_dynamo_op18.onnx").read_bytes()
    assert info["config"]["model_class"] == "LlamaForCausalLM"


def test_bundled_model_loads_as_the_recorded_architecture():
    info = default_model_info()["config"]
    ir = load_model(str(default_model_path()))
    assert ir.config.arch == "llama"
    assert ir.config.hidden_size == info["hidden_size"]
    assert ir.config.num_layers == info["num_hidden_layers"]
    assert ir.config.vocab_size == info["vocab_size"]
    assert ir.config.num_kv_heads < ir.config.num_heads  # grouped-query attention
