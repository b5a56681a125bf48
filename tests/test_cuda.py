"""CUDA paths: the same code on the GPU gives the CPU's answers. Skipped without a GPU."""

import numpy as np
import pytest
import torch

import skmm
from skmm.bench.synthetic import make_mixture
from skmm.moments import project_capped_simplex

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_gpu_sketch_is_the_cpu_sketch_bit_for_bit_and_batch_invariant(kind):
    x = np.random.default_rng(0).standard_normal((700, 5000)).astype(np.float32)
    cpu = skmm.sketch(x, 64, kind=kind, seed=1)
    gpu = skmm.sketch(torch.from_numpy(x).cuda(), 64, kind=kind, seed=1)
    # exact integer products in float64 on both devices: the same bytes
    np.testing.assert_array_equal(gpu.cpu().numpy(), cpu)
    again = skmm.sketch(torch.from_numpy(x).cuda(), 64, kind=kind, seed=1, batch_size=129)
    assert torch.equal(gpu, again)


def test_gpu_projection_matches_cpu():
    y = torch.randn(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cpu = project_capped_simplex(y, 1 / 300)
    gpu = project_capped_simplex(y.cuda(), 1 / 300)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("objective", ["aopt", "logdet", "diagonal"])
def test_gpu_skmm_selects_what_the_cpu_selects(objective):
    pool = make_mixture(1500, 1000, n_clusters=8, seed=1)
    features = pool.features.astype(np.float32)
    cpu = skmm.select(features, 40, objective=objective, random_state=0)
    gpu = skmm.select(torch.from_numpy(features).cuda(), 40, objective=objective, random_state=0)
    assert gpu.info["device"].startswith("cuda")
    if objective == "diagonal":
        # The diagonal objective's solver stops on a tolerance; rounding noise may move a pick.
        assert len(np.intersect1d(cpu.indices, gpu.indices)) >= 36
    else:
        np.testing.assert_array_equal(np.sort(cpu.indices), np.sort(gpu.indices))
    assert np.unique(pool.clusters[gpu.indices]).size == 8


@pytest.mark.parametrize("method", ["uniform", "adaptive", "leverage", "ridge_leverage"])
def test_gpu_sampling_baselines_run_and_agree_with_cpu(method):
    features = np.random.default_rng(2).standard_normal((800, 40)).astype(np.float32)
    cpu = skmm.select(features, 20, method, random_state=3)
    gpu = skmm.select(torch.from_numpy(features).cuda(), 20, method, random_state=3)
    assert gpu.info["device"].startswith("cuda") and len(gpu) == 20
    assert len(np.intersect1d(cpu.indices, gpu.indices)) >= 15
