"""Tiny stand-ins for pretrained models, built in the tests (no network, no downloads)."""

from __future__ import annotations

import torch


def tiny_bert(seed: int = 0):
    """A 2-layer, 16-wide BERT classifier over a 40-token vocabulary, with 3 labels."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_llama(vocab_size: int = 64, hidden: int = 32, layers: int = 3, seed: int = 0):
    """A random Llama causal LM (4 heads of 8 over 2 KV heads when hidden = 32; tied
    embeddings), in eval mode."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3 // 2,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 8),
        num_key_value_heads=max(1, hidden // 16),
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config).eval()
