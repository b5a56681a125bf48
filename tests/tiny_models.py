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
