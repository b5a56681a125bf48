import numpy as np
import pytest
import torch

from skmm.spectrum import covariance, intrinsic_dimension, spectrum


def test_spectrum_of_a_known_covariance():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    values = np.array([9.0, 4.0, 1.0, 0.0, 0.0])
    rows = np.sqrt(5 * values)[:, None] * basis.T  # 5 rows with G^T G / 5 = B diag(values) B^T
    spec = spectrum(torch.from_numpy(rows))
    np.testing.assert_allclose(spec.eigenvalues.numpy(), values, atol=1e-12)
    assert spec.trace == pytest.approx(14.0)
    assert spec.effective_rank() == 3
    assert spec.eigenvalues.dtype == torch.float64


def test_covariance_is_accumulated_in_float64_with_weights():
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float32)
    torch.testing.assert_close(
        covariance(rows), torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    )
    weights = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(
        covariance(rows, weights), torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    )


def test_intrinsic_dimension_definition():
    # r̄ = min{t : Σ_{j>t} λ_j ≤ Σ λ / N}
    values = np.array([10.0, 5.0, 0.5, 0.01, 0.0])
    assert intrinsic_dimension(values, n_rows=10) == 2  # tail after 2 is 0.51 ≤ 1.551
    assert intrinsic_dimension(values, n_rows=1000) == 3  # tail after 3 is 0.01 ≤ 0.01551
    assert intrinsic_dimension(values, n_rows=10_000) == 4  # 0.01 > 0.001551
    assert intrinsic_dimension(np.zeros(3), n_rows=5) == 0


def test_intrinsic_dimension_of_a_cluster_pool_counts_the_clusters():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((4, 200))
    rows = centers[rng.integers(0, 4, 500)] + 1e-4 * rng.standard_normal((500, 200))
    assert spectrum(torch.from_numpy(rows)).intrinsic_dimension() == 4


def test_blocks_give_the_moment_of_every_block_about_its_own_mean():
    rng = np.random.default_rng(4)
    rows = torch.from_numpy(rng.standard_normal((300, 4 * 6)) + rng.uniform(-3, 3, 24))
    blocks = rows.reshape(300, 4, 6)
    means = blocks.mean(dim=0)
    centered = (blocks - means).reshape(-1, 6)
    expected = centered.T @ centered / 300  # (1/N) Σ_i Σ_k, not over the N·K sub-rows
    spec = spectrum(rows, center=True, blocks=4)
    rebuilt = spec.eigenvectors @ torch.diag(spec.eigenvalues) @ spec.eigenvectors.T
    torch.testing.assert_close(rebuilt, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(spec.mean, means)
    assert (spec.blocks, spec.n_rows) == (4, 300)
    uncentered = spectrum(rows, blocks=4)
    flat = blocks.reshape(-1, 6)
    rebuilt = (
        uncentered.eigenvectors @ torch.diag(uncentered.eigenvalues) @ uncentered.eigenvectors.T
    )
    torch.testing.assert_close(rebuilt, flat.T @ flat / 300, atol=1e-10, rtol=1e-10)
    # one block is the ordinary spectrum, bit for bit
    one = spectrum(rows, center=True, blocks=1)
    plain = spectrum(rows, center=True)
    assert torch.equal(one.eigenvalues, plain.eigenvalues)
    assert torch.equal(one.mean, plain.mean)
