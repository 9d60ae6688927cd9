"""Protocol splits: pairs, shared fold models, group separation and the training cap."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.classify.protocols import ProtocolError, cap_train, has_groups, make_splits


def cells(n_per_domain=30, domains=("a", "b", "c")):
    labels = np.tile(np.repeat(["x", "y", "z"], n_per_domain // 3), len(domains))
    return labels, np.repeat(domains, n_per_domain)


def test_source_target_and_in_domain_share_fold_models():
    labels, domains = cells()
    splits = list(make_splits(labels, domains, ["source_target", "in_domain"], 3, seed=0))
    assert len(splits) == 3 * 3  # one fit per source fold, not two
    for split in splits:
        assert set(domains[split.train]) == {split.source}
        kinds = {(e.protocol, e.target) for e in split.evaluations}
        others = {("source_target", t) for t in "abc" if t != split.source}
        assert kinds == {("in_domain", split.source)} | others
        held_out = next(e.test for e in split.evaluations if e.protocol == "in_domain")
        assert not set(held_out) & set(split.train)
        for e in split.evaluations:
            if e.protocol == "source_target":
                assert len(e.test) == 30  # the whole target domain
    for source in "abc":
        folds = [next(e.test for e in s.evaluations if e.protocol == "in_domain")
                 for s in splits if s.source == source]
        assert sorted(np.concatenate(folds)) == list(np.flatnonzero(domains == source))


def test_in_domain_alone_and_lodo():
    labels, domains = cells()
    only = list(make_splits(labels, domains, ["in_domain"], 2, seed=0))
    assert all(len(s.evaluations) == 1 for s in only) and len(only) == 6
    lodo = list(make_splits(labels, domains, ["lodo"], 5, seed=0))
    assert [(s.source, s.evaluations[0].target) for s in lodo] == [("b+c", "a"), ("a+c", "b"),
                                                                   ("a+b", "c")]
    for s in lodo:
        assert s.evaluations[0].target not in set(domains[s.train])


def test_a_lab_that_is_not_a_source_gets_its_in_lab_k_fold_and_nothing_more():
    labels, domains = cells()
    splits = list(make_splits(labels, domains, ["source_target", "in_domain"], 3, seed=0,
                              sources=["a"]))
    in_lab = [s for s in splits if s.source != "a"]
    assert len(splits) == 3 + 2 * 3 and {s.source for s in in_lab} == {"b", "c"}
    for s in in_lab:
        (e,) = s.evaluations
        assert e.protocol == "in_domain" and e.target == s.source
        assert set(domains[s.train]) == {s.source} and not set(e.test) & set(s.train)
    # a lab of one class has no in-lab ceiling to train
    single = labels.copy()
    single[domains == "c"] = "x"
    assert {s.source for s in make_splits(single, domains, ["source_target", "in_domain"], 3,
                                          seed=0, sources=["a"])} == {"a", "b"}
    # without in_domain, a target lab is only scored cross-lab
    cross = list(make_splits(labels, domains, ["source_target"], 3, seed=0, sources=["a"]))
    assert {s.source for s in cross} == {"a"}


def test_folds_are_stratified_and_seeded():
    labels, domains = cells(60)
    first = list(make_splits(labels, domains, ["in_domain"], 5, seed=1))
    again = list(make_splits(labels, domains, ["in_domain"], 5, seed=1))
    other = list(make_splits(labels, domains, ["in_domain"], 5, seed=2))
    assert all(np.array_equal(a.train, b.train) for a, b in zip(first, again))
    assert not all(np.array_equal(a.train, b.train) for a, b in zip(first, other))
    for split in first:
        test = split.evaluations[0].test
        assert sorted(np.unique(labels[test], return_counts=True)[1]) == [4, 4, 4]


def test_groups_never_straddle_a_split():
    labels, domains = cells(60)
    groups = np.array([f"g{i // 3}" for i in range(len(labels))])  # triplets, some across labels
    groups[5] = groups[65] = "shared"  # a near-duplicate pair across domains a and b
    assert has_groups(groups) and not has_groups(np.arange(10).astype(str))
    for split in make_splits(labels, domains, ["source_target", "in_domain", "lodo"], 3, 0,
                             groups):
        for e in split.evaluations:
            assert not set(groups[split.train]) & set(groups[e.test])


def test_cap_keeps_class_shares():
    labels = np.array(["x"] * 900 + ["y"] * 90 + ["z"] * 10)
    train = np.arange(1000)
    rng = np.random.default_rng(0)
    capped = cap_train(train, labels, 100, rng)
    counts = dict(zip(*np.unique(labels[capped], return_counts=True)))
    assert counts == {"x": 90, "y": 9, "z": 1}
    assert cap_train(train, labels, None, rng) is train
    splits = make_splits(labels, np.repeat(["a", "b"], 500), ["lodo"], 2, 0, max_train=50)
    assert all(len(s.train) <= 51 for s in splits)


def test_bad_requests_are_refused():
    labels, domains = cells()
    with pytest.raises(ProtocolError, match="unknown protocol"):
        list(make_splits(labels, domains, ["loso"], 3, 0))
    with pytest.raises(ProtocolError, match="at least 2 domains"):
        list(make_splits(labels[:30], domains[:30], ["lodo"], 3, 0))


def test_sources_restrict_the_domains_trained_on():
    labels = np.array(["a", "b"] * 30)
    domains = np.repeat(["x", "y", "z"], 20)
    splits = list(make_splits(labels, domains, ["source_target", "in_domain"], 2, 0,
                              sources=["y"]))
    cross = [s for s in splits if s.source == "y"]
    assert len(cross) == 2
    for s in cross:
        assert set(domains[s.train]) == {"y"}
        assert {e.target for e in s.evaluations} == {"x", "y", "z"}
    # The other labs train only their own in-lab ceiling, scored only inside themselves.
    for s in splits:
        assert {e.target for e in s.evaluations} == {"x", "y", "z"} if s.source == "y" \
            else {(e.protocol, e.target) for e in s.evaluations} == {("in_domain", s.source)}
    with pytest.raises(ProtocolError, match="classify.sources"):
        list(make_splits(labels, domains, ["source_target"], 2, 0, sources=["w"]))


def _few_shot(labels, domains, groups=None, shots=(1, 3), draws=4, seed=0, sources=None):
    return list(make_splits(labels, domains, ["few_shot"], 2, seed, groups, sources=sources,
                            shots=shots, draws=draws))


def test_few_shot_draws_never_leak_a_test_cell_into_training():
    labels, domains = cells(60)
    groups = np.array([f"g{i // 2}" for i in range(len(labels))])  # near-duplicate pairs
    splits = _few_shot(labels, domains, groups)
    assert len(splits) == 3 * 2 * 4 * 2  # sources x targets x draws x shots
    for s in splits:
        (ev,) = s.evaluations
        assert ev.protocol == "few_shot" and ev.target != s.source
        assert not set(s.train) & set(ev.test)
        assert not set(groups[s.train]) & set(groups[ev.test])
        shots = s.train[domains[s.train] == ev.target]
        assert sorted(np.unique(labels[shots], return_counts=True)[1]) == [ev.shots] * 3
        assert len(np.unique(groups[shots])) == len(shots)  # one cell per drawn group
        assert set(ev.test) | set(shots) <= set(np.flatnonzero(domains == ev.target))
        assert set(domains[s.train]) == {s.source, ev.target}
        np.testing.assert_array_equal(np.sort(s.labelled_target), np.sort(shots))


def test_few_shot_shots_are_nested_within_a_draw_and_differ_between_draws():
    labels, domains = cells(60)
    splits = _few_shot(labels, domains, sources=["a"])
    by = {(s.evaluations[0].target, s.fold, s.evaluations[0].shots):
          set(s.train[domains[s.train] != "a"]) for s in splits}
    for target in "bc":
        for draw in range(4):
            assert by[(target, draw, 1)] < by[(target, draw, 3)]
        assert len({frozenset(by[(target, d, 3)]) for d in range(4)}) > 1
    again = _few_shot(labels, domains, sources=["a"])
    assert all(np.array_equal(x.train, y.train) for x, y in zip(splits, again))


def test_few_shot_leaves_classes_with_too_few_cells_unshot():
    labels = np.array(["x"] * 20 + ["x"] * 10 + ["y"] * 2)
    domains = np.array(["a"] * 20 + ["b"] * 12)
    labels[:10] = "y"
    (s,) = _few_shot(labels, domains, shots=(2,), draws=1, sources=["a"])
    shots = s.train[domains[s.train] == "b"]
    assert set(labels[shots]) == {"x"} and len(shots) == 2  # y has only 2 cells in b
    assert set(labels[s.evaluations[0].test]) == {"x", "y"}


def test_the_user_s_labelled_cells_train_and_test_as_the_same_few_shot_draw():
    """The labelling loop's protocol equals few_shot for the same cells: the same training rows,
    the same test rows, so the same score for the same classifier."""
    labels, domains = cells()
    few = [s for s in make_splits(labels, domains, ["few_shot"], 3, 0, shots=[2], draws=1,
                                  sources=["a"]) if s.evaluations[0].target == "b"][0]
    chosen = np.zeros(len(labels), bool)
    chosen[few.train[domains[few.train] == "b"]] = True
    loop = [s for s in make_splits(labels, domains, [], 3, 0, sources=["a"],
                                   user_labelled=chosen)]
    assert len(loop) == 1 and loop[0].evaluations[0].protocol == "target_labels"
    np.testing.assert_array_equal(loop[0].train, few.train)
    np.testing.assert_array_equal(loop[0].evaluations[0].test, few.evaluations[0].test)
    np.testing.assert_array_equal(np.sort(loop[0].labelled_target), np.sort(few.labelled_target))
    assert loop[0].evaluations[0].shots == 2
    # every other protocol leaves the user's cells out of its test sets
    for split in make_splits(labels, domains, ["source_target", "lodo"], 3, 0,
                             user_labelled=chosen):
        for e in split.evaluations:
            assert not chosen[e.test].any()
