"""The vision warm-up's batches: the photos' share, the category weights, the category phase."""

from __future__ import annotations

import torch

from model_store.demo_vision import IGNORE, batch_indices, category_weights, draw_batch


def test_a_share_of_each_batch_comes_from_the_partially_labelled_rows() -> None:
    partial = torch.tensor([True] * 10 + [False] * 990)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = batch_indices(partial, 32, 0.75, generator)
        assert batch.shape == (32,)
        assert int(partial[batch].sum()) == 24  # round(32 * 0.75), however rare they are


def test_without_a_share_or_without_both_kinds_rows_are_drawn_uniformly() -> None:
    generator = torch.Generator().manual_seed(0)
    partial = torch.tensor([True] * 10 + [False] * 990)
    drawn = torch.cat([batch_indices(partial, 32, None, generator) for _ in range(50)])
    assert int(partial[drawn].sum()) < 160  # 1% of 1,600 draws expected (16), not 75%
    only_full = torch.zeros(100, dtype=torch.bool)
    assert bool((batch_indices(only_full, 32, 0.75, generator) < 100).all())


def test_category_weights_span_the_data_mix_to_equal_categories() -> None:
    # Six categories' rows: 60 of the first, 10 of the second, 30 of the third, and one
    # row whose category is unknown.
    categories = [0] * 60 + [1] * 10 + [2] * 30 + [IGNORE]
    labels = torch.tensor([[c, 0, 0] for c in categories])
    assert bool((category_weights(labels, 0.0) == 1).all())
    equal = category_weights(labels, 1.0)
    known = torch.tensor(categories[:-1])
    totals = [float(equal[:-1][known == c].sum()) for c in range(3)]
    assert all(abs(total - 1.0) < 1e-9 for total in totals)  # each category weighs the same
    assert float(equal[-1]) == 1.0
    root = category_weights(labels, 0.5)
    assert abs(float(root[0]) / float(root[60]) - (10 / 60) ** 0.5) < 1e-9


def test_weights_skew_the_draw_among_the_partial_rows_only() -> None:
    partial = torch.tensor([True] * 100 + [False] * 100)
    weights = torch.ones(200, dtype=torch.double)
    weights[:10] = 9.0  # 10 rows x 9 against 90 rows x 1: half of the partial draws
    weights[100:110] = 1000.0  # ignored: the other rows are drawn uniformly
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([batch_indices(partial, 32, 0.75, generator, weights) for _ in range(100)])
    heavy = int((drawn < 10).sum())
    assert int(partial[drawn].sum()) == 2400
    assert 1000 < heavy < 1400  # 1,200 expected; a uniform draw gives 240
    favoured_others = int(((drawn >= 100) & (drawn < 110)).sum())
    assert favoured_others < 160  # 80 of the 800 other draws expected; weighted: about 790


def test_the_category_phase_draws_the_photos_alone_with_their_category_alone() -> None:
    partial = torch.tensor([True] * 50 + [False] * 50)
    labels = torch.tensor([[i % 6, i % 16, i % 5] for i in range(100)])
    generator = torch.Generator().manual_seed(0)
    kept = labels.clone()
    batch, first = draw_batch(labels, partial, generator, size=32, share=0.75, weights=None, category_only=True)  # fmt: skip
    assert bool(partial[batch].all())
    assert bool((first[:, 0] == labels[batch, 0]).all())
    assert bool((first[:, 1:] == IGNORE).all())
    assert bool((labels == kept).all())  # the records' own labels are untouched
    batch, later = draw_batch(labels, partial, generator, size=32, share=0.75, weights=None, category_only=False)  # fmt: skip
    assert int(partial[batch].sum()) == 24
    assert bool((later == labels[batch]).all())
