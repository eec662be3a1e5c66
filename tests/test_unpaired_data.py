"""Unpaired slices: every target partner comes from another subject, reshuffled per epoch, reproducible."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from synthmed.data.datasets import PreparedData, SliceDataset, _cross_group_partners


def subject_of(data, rows):
    return np.asarray(data.arrays["index"][rows, 0])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_targets_come_from_other_subjects_every_epoch(prepared, split):
    data = PreparedData(prepared)
    dataset = SliceDataset(data, split, unpaired=True, seed=0)
    assert len(np.unique(subject_of(data, dataset.rows))) >= 2
    if split == "train":  # 2 subjects of 22 slices (the val split's 24 + 23 takes the unbalanced branch)
        assert 2 * np.unique(subject_of(data, dataset.rows), return_counts=True)[1].max() <= len(dataset)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        assert (subject_of(data, dataset.partner) != subject_of(data, dataset.rows)).all()
        # No subject holds more than half of the slices: a permutation, every target slice seen once per epoch.
        counts = np.unique(subject_of(data, dataset.rows), return_counts=True)[1]
        if 2 * counts.max() <= len(dataset):
            assert sorted(dataset.partner) == sorted(dataset.rows)
        for item in range(len(dataset)):
            sample = dataset[item]
            row, partner = dataset.rows[item], dataset.partner[item]
            assert torch.equal(sample["source"][0], torch.from_numpy(np.array(data.arrays["source"][row])))
            assert torch.equal(sample["target"][0], torch.from_numpy(np.array(data.arrays["target"][partner])))
            assert torch.equal(
                sample["mask"][0], torch.from_numpy(np.array(data.arrays["mask"][row], dtype=np.float32))
            )


def test_no_pairing_leaks_in(prepared):
    data = PreparedData(prepared)
    dataset = SliceDataset(data, "train", unpaired=True, seed=0)
    target = data.arrays["target"]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for item in range(len(dataset)):
            row = dataset.rows[item]
            assert not np.array_equal(dataset[item]["target"][0].numpy(), target[row])  # not its own target
            # nor a neighbouring slice of the same head
            same_subject = dataset.rows[subject_of(data, dataset.rows) == subject_of(data, [row])[0]]
            assert dataset.partner[item] not in same_subject


def test_pairing_is_reshuffled_per_epoch_and_reproducible_from_the_seed(prepared):
    data = PreparedData(prepared)
    a = SliceDataset(data, "train", unpaired=True, seed=0)
    b = SliceDataset(data, "train", unpaired=True, seed=0)
    epochs = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert np.array_equal(a.partner, b.partner)
        epochs.append(a.partner.copy())
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    a.set_epoch(0)
    assert np.array_equal(a.partner, epochs[0])  # depends on (seed, epoch) only, not on history
    other = SliceDataset(data, "train", unpaired=True, seed=1)
    assert not np.array_equal(other.partner, epochs[0])


def test_paired_mode_is_unchanged(prepared):
    data = PreparedData(prepared)
    dataset = SliceDataset(data, "train")
    dataset.set_epoch(3)
    assert np.array_equal(dataset.partner, dataset.rows)
    for item in range(len(dataset)):
        assert np.array_equal(dataset[item]["target"][0].numpy(), data.arrays["target"][dataset.rows[item]])


class FakeData:
    """A stand-in for PreparedData with chosen slices per subject (slice value = its row)."""

    def __init__(self, slices_per_subject):
        subjects = np.repeat(np.arange(len(slices_per_subject)), slices_per_subject)
        n = len(subjects)
        self.root = Path("fake")
        self.arrays = {
            "index": np.stack([subjects, np.arange(n)], 1).astype(np.int32),
            "source": np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32),
            "target": -np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32),
            "mask": np.ones((n, 4, 4), np.uint8),
        }

    def rows(self, split):
        return np.arange(len(self.arrays["index"]))


def test_unbalanced_subjects_still_get_other_subjects_targets():
    data = FakeData([30, 5, 2])  # one subject holds most slices: no permutation can avoid it
    dataset = SliceDataset(data, "train", unpaired=True, seed=0)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        assert (subject_of(data, dataset.partner) != subject_of(data, dataset.rows)).all()
    # The big subject's slices draw from both small subjects.
    assert set(subject_of(data, dataset.partner[:30])) == {1, 2}


def test_one_subject_warns_and_pairs_other_slices(caplog):
    data = FakeData([9])
    with caplog.at_level(logging.WARNING, logger="synthmed.data.datasets"):
        dataset = SliceDataset(data, "train", unpaired=True, seed=0)
    assert "one subject" in caplog.text and "weak" in caplog.text
    assert (dataset.partner != dataset.rows).all() and sorted(dataset.partner) == sorted(dataset.rows)
    with caplog.at_level(logging.WARNING, logger="synthmed.data.datasets"):
        caplog.clear()
        SliceDataset(data, "train", seed=0)  # paired: nothing to warn about
    assert not caplog.text


@pytest.mark.parametrize("sizes", [[1, 1], [3, 3, 3], [5, 4, 1], [10, 2, 2, 2, 2, 2], [7] * 12, [6, 1], [1], [4]])
def test_cross_group_partners(sizes):
    groups = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # any labels
    partner = _cross_group_partners(groups, np.random.default_rng(0))
    n = len(groups)
    if n == 1:
        assert partner.tolist() == [0]
        return
    if len(sizes) == 1:
        assert (partner != np.arange(n)).all()
    else:
        assert (groups[partner] != groups).all()
    if 2 * max(sizes) <= n:
        assert sorted(partner) == list(range(n))
    assert np.array_equal(partner, _cross_group_partners(groups, np.random.default_rng(0)))


def test_cross_group_pairing_is_mixed_beyond_subject_blocks():
    # With 3 equal subjects, slices of one subject should be paired with both other subjects, not one block.
    groups = np.repeat([0, 1, 2], 20)
    partner = _cross_group_partners(groups, np.random.default_rng(1))
    for subject in range(3):
        assert len(set(groups[partner[groups == subject]])) == 2
