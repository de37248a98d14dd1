"""The ranking loss against a hand-computed value; the S-XBM loss on known geometry."""
import math

import torch

from smec_hf.engine.losses import graded_ranking_loss, similarity_preservation_loss


def test_graded_ranking_loss_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # cosines: q0 -> (1, 0, c), q1 -> (0, 1, c), c = 1/sqrt(2); scale 2
    c = 1 / math.sqrt(2)
    sp = lambda z: math.log1p(math.exp(z))
    pairs = [
        (2, sp(2 * (0 - 1))),   # q0: doc0 (y=2) over doc1 (y=0)
        (1, sp(2 * (c - 1))),   # q0: doc0 (y=2) over doc2 (y=1)
        (1, sp(2 * (0 - c))),   # q0: doc2 (y=1) over doc1 (y=0)
        (1, sp(2 * (0 - 1))),   # q1: doc1 over doc0
        (1, sp(2 * (c - 1))),   # q1: doc1 over doc2
    ]
    expected = sum(w * v for w, v in pairs) / len(pairs)
    got = graded_ranking_loss(q, d, labels, scale=2.0)
    assert abs(got.item() - expected) < 1e-6


def test_graded_ranking_loss_decreases_when_positives_move_closer():
    q = torch.tensor([[1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0]])
    far = graded_ranking_loss(q, torch.tensor([[0.0, 1.0], [1.0, 0.2]]), labels, 10.0)
    near = graded_ranking_loss(q, torch.tensor([[1.0, 0.1], [0.0, 1.0]]), labels, 10.0)
    assert near < far


def test_similarity_preservation_is_zero_for_identical_geometry_and_mean_abs_otherwise():
    torch.manual_seed(0)
    full = torch.randn(3, 8)
    nb = torch.randn(3, 2, 8)
    valid = torch.ones(3, 2, dtype=torch.bool)
    assert similarity_preservation_loss(full, nb, full, nb, valid).item() < 1e-6
    e = torch.tensor([[1.0, 0.0]])
    e_nb = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    c = torch.tensor([[1.0]])
    c_nb = torch.tensor([[[1.0], [-1.0]]])
    # |1 - 1| and |0 - (-1)| -> mean 0.5 ; masking the second slot -> 0
    assert abs(similarity_preservation_loss(e, e_nb, c, c_nb, valid[:1]).item() - 0.5) < 1e-6
    mask = torch.tensor([[True, False]])
    assert similarity_preservation_loss(e, e_nb, c, c_nb, mask).item() < 1e-6
