"""The batch loader: x/y alignment, determinism by seed, epochs, resume, shapes and errors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from microgpt.data.loader import DataLoader
from microgpt.data.shards import ShardError, write_shard


def _shards(tmp_path, sizes, vocab=1000, seed=0):
    rng = np.random.default_rng(seed)
    paths, arrays = [], []
    for i, n in enumerate(sizes):
        ids = rng.integers(0, vocab, size=n)
        path = str(tmp_path / f"train_{i:06d}.bin")
        write_shard(path, ids, vocab)
        paths.append(path)
        arrays.append(ids)
    return paths, arrays


def test_targets_are_inputs_shifted_and_windows_come_from_the_shards(tmp_path):
    _, arrays = _shards(tmp_path, [101, 57, 10])
    loader = DataLoader(str(tmp_path), "train", batch_size=3, block_size=8, seed=5)
    assert loader.num_windows == 100 // 8 + 56 // 8 + 9 // 8
    windows = set()
    for a in arrays:                                      # the oracle: every aligned window
        for i in range((len(a) - 1) // 8):
            windows.add(tuple(a[i * 8:i * 8 + 9]))
    seen = set()
    for _ in range(loader.num_windows // 3):
        x, y = loader.next_batch()
        assert x.dtype == np.int64 and x.shape == y.shape == (3, 8)
        for row in range(3):
            full = tuple(x[row]) + (y[row, -1],)
            np.testing.assert_array_equal(x[row, 1:], y[row, :-1])
            assert full in windows
            seen.add(full)
    assert len(seen) == (loader.num_windows // 3) * 3     # no repeats within an epoch


def test_same_seed_same_batches_other_seed_other_order(tmp_path):
    _shards(tmp_path, [500, 300])
    a = DataLoader(str(tmp_path), "train", 4, 16, seed=1)
    b = DataLoader(str(tmp_path), "train", 4, 16, seed=1)
    c = DataLoader(str(tmp_path), "train", 4, 16, seed=2)
    xa = [a.next_batch()[0] for _ in range(20)]           # 80 windows: crosses epochs
    xb = [b.next_batch()[0] for _ in range(20)]
    xc = [c.next_batch()[0] for _ in range(20)]
    assert all(np.array_equal(p, q) for p, q in zip(xa, xb))
    assert not all(np.array_equal(p, q) for p, q in zip(xa, xc))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 7), block=st.integers(1, 20), cut=st.integers(0, 30))
def test_resume_from_saved_position_equals_uninterrupted(tmp_path_factory, batch, block, cut):
    tmp = tmp_path_factory.mktemp("resume")
    _shards(tmp, [97, 131, 2, 64])
    straight = DataLoader(str(tmp), "train", batch, block, seed=3)
    expected = [straight.next_batch() for _ in range(cut + 10)]
    first = DataLoader(str(tmp), "train", batch, block, seed=3)
    for _ in range(cut):
        first.next_batch()
    state = first.state_dict()
    resumed = DataLoader(str(tmp), "train", batch, block, seed=3)
    resumed.load_state_dict(state)
    for x_exp, y_exp in expected[cut:]:
        x, y = resumed.next_batch()
        np.testing.assert_array_equal(x, x_exp)
        np.testing.assert_array_equal(y, y_exp)


def test_unshuffled_order_is_file_order(tmp_path):
    _, arrays = _shards(tmp_path, [41, 41])
    loader = DataLoader(str(tmp_path), "train", 5, 10, shuffle=False)
    x, _ = loader.next_batch()
    np.testing.assert_array_equal(x[:4].ravel(), arrays[0][:40])
    np.testing.assert_array_equal(x[4], arrays[1][:10])


def test_errors(tmp_path):
    _shards(tmp_path, [5])
    with pytest.raises(ShardError, match="too few for one window"):
        DataLoader(str(tmp_path), "train", 2, 8)
    with pytest.raises(ShardError, match="no val shards"):
        DataLoader(str(tmp_path), "val", 2, 2)
    with pytest.raises(ShardError, match="no such data directory"):
        DataLoader(str(tmp_path / "nope"), "train", 2, 2)
    loader = DataLoader(str(tmp_path), "train", 2, 2, seed=0)
    with pytest.raises(ShardError, match="seed"):
        loader.load_state_dict({"position": 3, "seed": 9})
    with pytest.raises(ShardError, match="position"):
        loader.load_state_dict({"position": -1})
    with pytest.raises(ShardError, match="vocabulary"):
        DataLoader(str(tmp_path), "train", 2, 2, vocab_size=50)
