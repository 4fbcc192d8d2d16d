"""The tensor pieces methods share: chunked nearest neighbours, the greedy coreset (against a naive reference),
the random projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inspection.ops.coreset import greedy_coreset, random_projection
from inspection.ops.knn import nearest_neighbors


def test_chunked_nearest_neighbours_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 16, generator=generator), torch.randn(1000, 16, generator=generator)
    reference = torch.cdist(queries.double(), bank.double())
    expected_d, expected_i = reference.topk(3, dim=1, largest=False)
    # A tiny block limit forces many query and bank chunks.
    distances, indices = nearest_neighbors(queries, bank, k=3, max_elements=4096)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(distances.double(), expected_d, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k, max_elements", [(1, 1 << 20), (3, 4096)])
def test_a_small_distance_between_long_vectors_keeps_its_digits(k, max_elements):
    """Features far from the origin (all positive, as after a ReLU) and queries that nearly copy bank rows, as a
    uniform background gives: |q|² − 2 q·b + |b|² on the raw vectors was off by 0.14 for distances of 0.01, and
    still by 0.013 once centred on the bank's mean; near copies are measured from the differences."""
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(5000, 64, generator=generator) * 3 + 20
    queries = bank[:300] + 1e-3 * torch.randn(300, 64, generator=generator)
    expected = torch.cdist(queries.double(), bank.double()).topk(k, dim=1, largest=False).values
    distances, _ = nearest_neighbors(queries, bank, k=k, max_elements=max_elements)
    assert float((distances.double() - expected).abs().max()) < 1e-5


def naive_greedy_coreset(points: np.ndarray, n_select: int, start: int) -> list[int]:
    """Reference: textbook greedy k-center with explicit loops and exact distances."""
    selected = [start]
    while len(selected) < n_select:
        best_index, best_distance = -1, -1.0
        for index in range(len(points)):
            nearest = min(float(np.sum((points[index] - points[chosen]) ** 2)) for chosen in selected)
            if nearest > best_distance:
                best_index, best_distance = index, nearest
        selected.append(best_index)
    return selected


@pytest.mark.parametrize("block", [512, 1, 7, 32])  # one block (the plain greedy), and lazy blocks, ragged too
def test_greedy_coreset_matches_the_naive_reference(block):
    points = np.random.default_rng(0).normal(size=(120, 5))
    selected = greedy_coreset(torch.from_numpy(points), 15, start_index=7, block=block)
    assert selected.tolist() == naive_greedy_coreset(points, 15, 7)


def test_lazy_blocks_choose_what_one_pass_per_step_chooses_on_clustered_points():
    # Clusters make most blocks stale for long stretches: the case the laziness skips work in.
    rng = np.random.default_rng(1)
    points = torch.from_numpy(np.concatenate([rng.normal(loc, 0.3, size=(400, 8)) for loc in range(-5, 6)]))
    plain = greedy_coreset(points, 60, start_index=3, block=len(points))
    assert greedy_coreset(points, 60, start_index=3, block=16).tolist() == plain.tolist()


def test_greedy_coreset_covers_every_cluster_where_random_sampling_would_not():
    rng = np.random.default_rng(1)
    # One big cluster and five tiny far-away ones: 6 greedy picks must hit all six clusters.
    centres = np.array([[0, 0], [50, 0], [0, 50], [-50, 0], [0, -50], [50, 50]], float)
    sizes = [995, 1, 1, 1, 1, 1]
    points = np.concatenate([centre + rng.normal(scale=0.5, size=(size, 2)) for centre, size in zip(centres, sizes)])
    labels = np.repeat(np.arange(6), sizes)
    selected = greedy_coreset(torch.from_numpy(points), 6, start_index=0)
    assert sorted(labels[selected.numpy()].tolist()) == [0, 1, 2, 3, 4, 5]


def test_random_projection_is_seeded_and_keeps_distances_roughly():
    features = torch.randn(50, 256, generator=torch.Generator().manual_seed(0))
    first, second = random_projection(features, 64, seed=3), random_projection(features, 64, seed=3)
    assert torch.equal(first, second) and first.shape == (50, 64)
    ratio = torch.pdist(first) / torch.pdist(features)
    assert 0.6 < ratio.mean().item() < 1.4
