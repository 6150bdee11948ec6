"""Tests for eval.retrieval against a brute-force numpy reference (ties included)."""

import numpy as np
import pytest

from eval import retrieval


def _codes(rng, n, bits):
  return rng.choice(np.array([-1.0, 1.0], np.float32), size=(n, bits))


def _brute_force(queries, database, k):
  """Distances by counting differing signs; a stable sort ranks ties by database index."""
  dist = (queries[:, None, :] != database[None, :, :]).sum(-1)
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(dist, order, axis=1)


@pytest.mark.parametrize("bits", [8, 32, 40, 256])
def test_pack_codes_and_distances(bits):
  rng = np.random.default_rng(bits)
  q, db = _codes(rng, 5, bits), _codes(rng, 9, bits)
  words = retrieval.pack_codes(q)
  assert words.dtype == np.uint32 and words.shape == (5, -(-bits // 32))
  unpacked = np.unpackbits(words.view(np.uint8), axis=1)[:, :bits]
  np.testing.assert_array_equal(unpacked, q > 0)
  d = retrieval.hamming_distances(words, retrieval.pack_codes(db))
  np.testing.assert_array_equal(d, (q[:, None] != db[None]).sum(-1))


@pytest.mark.parametrize(
  ("bits", "num_db", "group_size", "query_batch"),
  [
    (6, 200, 32, 64),  # 64 possible codes: many tied distances
    (40, 150, 7, 33),  # groups and query blocks that do not divide the sizes
    (256, 300, 32, 1024),
    (12, 10, 64, 4),  # a group larger than the database, k equal to the database size
  ],
)
def test_knn_matches_brute_force(bits, num_db, group_size, query_batch):
  rng = np.random.default_rng(0)
  q, db = _codes(rng, 70, bits), _codes(rng, num_db, bits)
  # Exact duplicates of database codes, so distance-0 ties are exercised too.
  db[num_db // 2 :: 7] = db[1]
  q[:5] = db[1]
  k = min(10, num_db)
  idx, dist = retrieval.hamming_knn(
    retrieval.pack_codes(q),
    retrieval.pack_codes(db),
    k=k,
    group_size=group_size,
    query_batch=query_batch,
  )
  ref_idx, ref_dist = _brute_force(q, db, k)
  np.testing.assert_array_equal(dist, ref_dist)
  np.testing.assert_array_equal(idx, ref_idx)
  assert idx.dtype == np.int32 and idx.shape == (70, k)


def test_ties_by_lowest_index():
  db = np.ones((6, 32), np.float32)  # every code identical
  idx, dist = retrieval.hamming_knn(
    retrieval.pack_codes(db[:2]), retrieval.pack_codes(db), k=4, group_size=4
  )
  np.testing.assert_array_equal(idx, [[0, 1, 2, 3]] * 2)
  np.testing.assert_array_equal(dist, 0)


def test_precision_at_k_hand_checked():
  neighbour_labels = np.array([[1, 0, 1], [2, 2, 0]])
  query_labels = np.array([1, 2])
  # Query 0: 1, 1/2, 2/3; query 1: 1, 1, 2/3.
  np.testing.assert_allclose(
    retrieval.precision_at_k(neighbour_labels, query_labels), [1.0, 0.75, 2.0 / 3.0]
  )


def test_split_database():
  q, db = retrieval.split_database(100, num_queries=20, seed=3)
  assert len(q) == 20 and len(db) == 80
  np.testing.assert_array_equal(np.sort(np.concatenate([q, db])), np.arange(100))
  q2, _ = retrieval.split_database(100, num_queries=20, seed=3)
  np.testing.assert_array_equal(q, q2)


def test_retrieval_precision_on_clustered_codes():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 400)
  centres = _codes(rng, 4, 64)
  codes = centres[labels].copy()
  flips = rng.random(codes.shape) < 0.05  # 5% bit noise; the centres are ~32 bits apart
  codes[flips] *= -1
  curve = retrieval.retrieval_precision(codes, labels, num_queries=50, k=10)
  assert curve.shape == (10,)
  np.testing.assert_allclose(curve, 1.0)
  # Random labels give chance precision.
  chance = retrieval.retrieval_precision(codes, rng.integers(0, 4, 400), num_queries=100, k=10)
  assert np.all(chance < 0.5)


def test_errors():
  words = retrieval.pack_codes(np.ones((3, 32)))
  with pytest.raises(ValueError, match="k must be"):
    retrieval.hamming_knn(words, words, k=4)
  with pytest.raises(ValueError, match="same W"):
    retrieval.hamming_knn(words, retrieval.pack_codes(np.ones((3, 64))), k=1)
  with pytest.raises(ValueError, match="codes must be"):
    retrieval.pack_codes(np.ones(5))
