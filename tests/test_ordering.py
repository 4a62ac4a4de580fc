"""Ordering network: antisymmetry, pairs, the paint order from pairwise decisions, the class prior, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_bank import Bank
from synthesis.canvas.protocols import Orderer
from synthesis.model_directory import from_pretrained, save_pretrained
from synthesis.networks.geometry import sample, window_boxes, window_theta
from synthesis.networks.ordering import (
    ClassPrior,
    LearnedOrderer,
    OrderingConfig,
    OrderingNet,
    PairInputs,
    boxes_of,
    neighbour_pairs,
    order_from_pairs,
    reduce_boxed,
    reduce_components,
    reduce_masks,
    sample_pairs,
    window_coords,
)
from synthesis.training.ordering import (
    OrderingRunConfig,
    OrderingTrainConfig,
    accuracy,
    benchmark_ordering,
    train_ordering,
)

torch.set_num_threads(1)

TINY = OrderingConfig(num_classes=11, input_size=(16, 16), widths=(4, 8), hidden=8, min_window=(16, 16))


def _rect(frame: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(frame, bool)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = True
    return m


def _random_net(config: OrderingConfig, seed: int = 0) -> OrderingNet:
    net = OrderingNet.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return net.eval()


def _random_pairs(b: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``b`` random inputs of the ``TINY`` net: masks a and b, layout, coords, classes a and b."""
    h, w = TINY.input_size
    gen = torch.Generator().manual_seed(seed)
    ma, mb = torch.rand(b, 1, h, w, generator=gen), torch.rand(b, 1, h, w, generator=gen)
    layout, coords = torch.rand(b, 11, h, w, generator=gen), torch.rand(b, 2, h, w, generator=gen)
    ca, cb = torch.randint(0, 11, (b,), generator=gen), torch.randint(0, 11, (b,), generator=gen)
    return ma, mb, layout, coords, ca, cb


# ---------------------------------------------------------------- network


def test_net_shapes_and_antisymmetry() -> None:
    net = _random_net(TINY)
    b = 5
    ma, mb, layout, coords, ca, cb = _random_pairs(b, seed=1)
    ab = net(ma, mb, layout, coords, ca, cb)
    ba = net(mb, ma, layout, coords, cb, ca)
    assert ab.shape == (b,) and ab.dtype == torch.float32
    assert torch.allclose(ab, -ba, atol=1e-5)
    assert ab.abs().max() > 0  # not trivially zero
    # The same pair twice is a tie.
    assert torch.allclose(net(ma, ma, layout, coords, ca, ca), torch.zeros(b), atol=1e-5)
    with pytest.raises(ValueError, match="inputs must be"):
        net(ma[..., :8], mb[..., :8], layout[..., :8], coords[..., :8], ca, cb)


def test_config_and_checkpoint_round_trip(tmp_path: Path) -> None:
    assert OrderingConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    with pytest.raises(ValueError, match="divisible"):
        OrderingConfig(input_size=(20, 20), widths=(4, 8, 8))
    net = _random_net(TINY)
    save_pretrained(net, tmp_path, dtype=torch.float16)
    loaded = from_pretrained(tmp_path)
    assert loaded.config == TINY
    for v, v2 in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(v.half().float(), v2)


def test_window_coords_are_frame_positions() -> None:
    frame = (100, 200)
    coords = window_coords(torch.tensor([[50.0, 100.0, 100.0, 200.0]]), frame, (4, 8))
    assert coords.shape == (1, 2, 4, 8)
    # A window equal to the frame: pixel-centre coordinates, from -1 + 1/n to 1 - 1/n.
    assert coords[0, 0, :, 0].tolist() == pytest.approx([-0.75, -0.25, 0.25, 0.75])
    assert coords[0, 1, 0, 0].item() == pytest.approx(-1 + 1 / 8)


# ---------------------------------------------------------------- pairs and masks


def test_neighbour_pairs_by_distance() -> None:
    frame = (20, 40)
    a = _rect(frame, (0, 0, 10, 10))
    touching = _rect(frame, (0, 10, 10, 20))  # shares an edge with a
    near = _rect(frame, (0, 21, 10, 30))  # 2 px from touching (a 1 px gap), 12 from a
    far = _rect(frame, (15, 35, 20, 40))
    overlapping = _rect(frame, (5, 5, 12, 12))
    masks = [a, touching, near, far, overlapping]
    assert neighbour_pairs(masks, 2) == [(0, 1), (0, 4), (1, 2), (1, 4)]
    assert neighbour_pairs(masks, 1) == [(0, 1), (0, 4), (1, 4)]
    assert neighbour_pairs(masks, 0) == [(0, 4), (1, 4)]  # overlap only
    assert neighbour_pairs([a, np.zeros(frame, bool)], 2) == []


def test_boxes_of() -> None:
    frame = (10, 10)
    assert boxes_of([_rect(frame, (1, 2, 4, 9)), np.zeros(frame, bool)]).tolist() == [[1, 2, 4, 9], [-1, -1, -1, -1]]


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 13), w=st.integers(1, 13), n=st.integers(1, 4), scale=st.integers(1, 3), seed=st.integers(0, 99)
)
def test_reduce_components_matches_reduce_masks(h: int, w: int, n: int, scale: int, seed: int) -> None:
    comp = np.random.default_rng(seed).integers(0, n + 1, (h, w))
    fast = reduce_components(comp, n, scale)
    slow = reduce_masks(np.stack([comp == i + 1 for i in range(n)]), scale)
    assert fast.shape == slow.shape == (n, 1, -(-h // scale), -(-w // scale))
    assert torch.allclose(fast, slow, atol=1e-6)


# ---------------------------------------------------------------- the batched path


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 30), w=st.integers(1, 30), n=st.integers(1, 5), scale=st.integers(1, 3), seed=st.integers(0, 99)
)
def test_reduce_boxed_matches_reduce_masks(h: int, w: int, n: int, scale: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        box = (y0, x0, int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1)))
        masks.append(_rect((h, w), box) & (rng.random((h, w)) < 0.7))
    masks.append(np.zeros((h, w), bool))
    got = reduce_boxed(masks, boxes_of(masks), scale)
    assert torch.equal(got, reduce_masks(np.stack(masks), scale))


def _street(frame: tuple[int, int], seed: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """A layout and overlapping segments of several classes (one empty)."""
    rng = np.random.default_rng(seed)
    h, w = frame
    layout = np.zeros(frame, np.uint8)
    layout[h // 2 :] = 3
    layout[rng.random(frame) < 0.05] = 255
    masks = [layout == 0, layout == 3]
    for _ in range(6):
        y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        masks.append(_rect(frame, (y0, x0, y0 + int(rng.integers(3, h // 2)), x0 + int(rng.integers(3, w // 2)))))
    masks.append(np.zeros(frame, bool))
    return layout, masks, [int(c) for c in rng.integers(0, 11, len(masks))]


def test_sample_pairs_equals_sampling_each_pair_from_its_masks() -> None:
    frame, config = (45, 70), TINY
    layout, masks, classes = _street(frame, 0)
    boxes = torch.from_numpy(boxes_of(masks)).float()
    reduced = reduce_masks(np.stack(masks), config.work_scale)
    labels = torch.from_numpy(np.ascontiguousarray(layout[:: config.work_scale, :: config.work_scale]))
    pairs = torch.as_tensor(neighbour_pairs(masks, config.adjacency))
    got = sample_pairs(labels, reduced, boxes, torch.as_tensor(classes), pairs, frame, config)
    # The reference: every pair's masks copied out of the stack and sampled on its window.
    g = window_theta(window_boxes(boxes[pairs[:, 0]], boxes[pairs[:, 1]], config), frame)
    for side, index in ((got.mask_a, pairs[:, 0]), (got.mask_b, pairs[:, 1])):
        assert torch.equal(side, sample(reduced[index], g, config.input_size, config.supersample))
    assert got.mask_a.shape == (len(pairs), 1, *config.input_size) and (got.mask_a > 0).any()


def test_forward_is_the_difference_of_the_two_one_sided_scores() -> None:
    net = _random_net(TINY)
    ma, mb, layout, coords, ca, cb = _random_pairs(4, seed=2)
    with torch.no_grad():
        ab, ba = PairInputs(ma, mb, layout, coords, ca, cb), PairInputs(mb, ma, layout, coords, cb, ca)
        want = net.score(ab) - net.score(ba)
        assert torch.allclose(net(ma, mb, layout, coords, ca, cb), want, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_orderer_equals_scoring_pair_by_pair(seed: int) -> None:
    frame = (45, 70)
    layout, masks, classes = _street(frame, seed)
    net = _random_net(TINY, seed)
    orderer = LearnedOrderer(net, TINY)
    one_at_a_time = LearnedOrderer(net, TINY, batch_size=1)
    pairs = neighbour_pairs(masks, TINY.adjacency)
    assert len(pairs) >= 5
    batched = orderer.pair_probabilities(layout, masks, classes, pairs)
    single = one_at_a_time.pair_probabilities(layout, masks, classes, pairs)
    assert batched.shape == (len(pairs),) and np.allclose(batched, single, atol=1e-5)
    order = orderer(layout, masks, classes)
    assert order == one_at_a_time(layout, masks, classes)
    assert order == order_from_pairs(len(masks), dict(zip(pairs, single.tolist(), strict=True)))
    with pytest.raises(ValueError, match="batch_size"):
        LearnedOrderer(net, TINY, batch_size=0)


# ---------------------------------------------------------------- orders


def test_order_from_pairs_respects_acyclic_decisions() -> None:
    # 2 in front of 0, 0 in front of 1, 3 in front of 2: back to front 1, 0, 2, 3; 4 has no neighbour.
    decisions = {(0, 2): 0.1, (0, 1): 0.9, (2, 3): 0.2}
    order = order_from_pairs(5, decisions)
    assert sorted(order) == [0, 1, 2, 3, 4]
    rank = {i: r for r, i in enumerate(order)}
    assert rank[1] < rank[0] < rank[2] < rank[3]


def test_order_from_pairs_breaks_a_cycle_at_the_weakest_decision() -> None:
    # 0 over 1 (0.9), 1 over 2 (0.9), 2 over 0 (0.6): the weak edge goes, giving 2, 1, 0.
    order = order_from_pairs(3, {(0, 1): 0.9, (1, 2): 0.9, (2, 0): 0.6})
    assert order == [2, 1, 0]


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(6))), st.integers(0, 1000))
def test_order_from_pairs_recovers_any_total_order(truth: list[int], seed: int) -> None:
    rank = {item: r for r, item in enumerate(truth)}  # back to front
    rng = np.random.default_rng(seed)
    decisions = {}
    for i in range(6):
        for j in range(i + 1, 6):
            if rng.random() < 0.7 or abs(rank[i] - rank[j]) == 1:  # a connected chain, plus some extras
                decisions[(i, j)] = 0.8 if rank[i] > rank[j] else 0.2
    assert order_from_pairs(6, decisions) == truth


def test_learned_orderer_follows_its_pairwise_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = (30, 30)
    masks = [_rect(frame, (0, 0, 10, 10)), _rect(frame, (0, 10, 10, 20)), _rect(frame, (10, 0, 20, 10))]
    orderer = LearnedOrderer(_random_net(TINY), TINY)
    assert isinstance(orderer, Orderer)

    def fake(layout: np.ndarray, ms: list, cs: list, pairs: list, boxes: np.ndarray | None = None) -> np.ndarray:
        assert pairs == [(0, 1), (0, 2), (1, 2)]  # 1 and 2 touch diagonally
        return np.array([0.8, 0.7, 0.3])  # 0 over 1, 0 over 2, 2 over 1

    monkeypatch.setattr(orderer, "pair_probabilities", fake)
    assert orderer(np.zeros(frame, np.uint8), masks, [1, 1, 8]) == [1, 2, 0]


def test_learned_orderer_real_forward_gives_a_permutation() -> None:
    frame = (40, 60)
    layout = np.zeros(frame, np.uint8)
    layout[20:] = 3
    masks = [layout == 0, layout == 3, _rect(frame, (15, 20, 30, 35)), np.zeros(frame, bool)]
    orderer = LearnedOrderer(_random_net(TINY), TINY)
    order = orderer(layout, masks, [0, 3, 8, 9])
    assert sorted(order) == [0, 1, 2, 3]
    probs = orderer.pair_probabilities(layout, masks, [0, 3, 8, 9], [(0, 1), (1, 0)])
    assert probs.shape == (2,) and probs[0] == pytest.approx(1 - probs[1], abs=1e-5)
    assert orderer(layout, [], []) == []
    with pytest.raises(ValueError, match="class ids"):
        orderer(layout, masks, [0])


def test_class_prior_fit_predict_and_order() -> None:
    # 0 loses to 1 twice; 1 beats 0 twice and loses to 2 twice; same-class pairs are ignored; 3 is unseen.
    a = np.array([0, 1, 1, 2, 2])
    b = np.array([1, 0, 2, 1, 2])
    y = np.array([False, True, False, True, True])
    prior = ClassPrior.fit(a, b, y, num_classes=4)
    assert prior.score == pytest.approx((0.0, 0.5, 1.0, 0.5))
    assert prior.predict(np.array([2, 0, 1]), np.array([0, 2, 1])).tolist() == [1.0, 0.0, 0.5]
    frame = (4, 4)
    masks = [np.ones(frame, bool)] * 3
    assert isinstance(prior, Orderer)
    assert prior(np.zeros(frame, np.uint8), masks, [2, 0, 1]) == [1, 2, 0]


def test_class_prior_save_load(tmp_path: Path) -> None:
    prior = ClassPrior((0.2, 0.9, 0.5))
    prior.save(tmp_path, ["sky", "car", "road"])
    assert ClassPrior.load(tmp_path) == prior
    saved = json.loads((tmp_path / "class_prior.json").read_text())
    assert saved["order_back_to_front"] == ["sky", "road", "car"]


def test_accuracy_counts_ties_as_half() -> None:
    assert accuracy(np.array([0.9, 0.1, 0.5, 0.6]), np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(1.5 / 4)


# ---------------------------------------------------------------- training


def test_training_and_benchmark_smoke(val_bank: Bank, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = OrderingRunConfig(TINY, OrderingTrainConfig(epochs=1, batch_size=32))
    summary = train_ordering(val_bank, out, config, progress=False).scores
    assert summary["epochs"] == 1 and summary["train_pairs"] > 50 and summary["val_pairs"] == 0
    assert math.isfinite(summary["train_loss"]) and 0.0 <= summary["train_accuracy"] <= 1.0
    assert {"checkpoints", "latest.json", "train_log.jsonl"} <= {p.name for p in out.iterdir()}
    prior = ClassPrior.load(out)
    assert prior.score[0] < 0.5  # sky is behind what it touches
    # Scored on (some of) its own training pairs.
    result = benchmark_ordering(val_bank, val_bank, out, progress=False, limit=3)
    assert 0 < result["val_pairs"] < summary["train_pairs"] and result["val_images"] == 3
    assert sum(k["pairs"] for n, k in result["by_kind"].items() if n != "all") == result["val_pairs"]
    assert result["by_kind"]["same_class"]["class_prior"] == 0.5
    assert result["by_kind"]["different_tier"]["class_prior"] >= 0.5
    for value in (*result["paint_order_agreement"].values(), *result["pairwise_accuracy"].values()):
        assert 0.0 <= value <= 1.0


# ---------------------------------------------------------------- the shipped weights

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "ordering"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ordering" / "camvid.json"


def test_shipped_weights_match_their_config_and_order_a_street() -> None:
    model = from_pretrained(WEIGHTS)
    config = model.config
    assert config == OrderingRunConfig.load(CONFIG).model
    prior = ClassPrior.load(WEIGHTS)
    assert prior.score[0] == min(prior.score)  # sky is the farthest class
    # A car standing on the road in front of a building under the sky: sky, building, road, car.
    frame = (360, 480)
    layout = np.zeros(frame, np.uint8)  # sky
    layout[100:220] = 1  # building
    layout[220:] = 3  # road
    layout[170:300, 150:330] = 8  # car
    masks = [layout == c for c in (0, 1, 3, 8)]
    order = LearnedOrderer(model, config)(layout, masks, [0, 1, 3, 8])
    assert order == [0, 1, 2, 3]
