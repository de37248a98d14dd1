"""S-XBM: FIFO wrap-around, top-K against brute force, no gradient into stored entries."""
import torch
import torch.nn.functional as F

from smec_hf.smec.memory import SelectableCrossBatchMemory


def test_fifo_wraps_around_and_keeps_the_newest_entries_in_order():
    memory = SelectableCrossBatchMemory(dim=2, size=5, top_k=2)
    for start in range(0, 12, 3):                       # batches 0-2, 3-5, 6-8, 9-11
        memory.enqueue(torch.arange(start, start + 3.0)[:, None].repeat(1, 2))
    assert len(memory) == 5
    assert memory.entries()[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    memory.enqueue(torch.arange(100, 108.0)[:, None].repeat(1, 2))   # a batch larger than the memory
    assert memory.entries()[:, 0].tolist() == [103.0, 104.0, 105.0, 106.0, 107.0]


def test_top_k_matches_brute_force_cosine_search():
    torch.manual_seed(0)
    memory = SelectableCrossBatchMemory(dim=16, size=50, top_k=4)
    stored = torch.randn(70, 16)
    for chunk in stored.split(10):
        memory.enqueue(chunk)
    queries = torch.randn(6, 16)
    neighbours, valid = memory.select(queries)
    kept = stored[-50:]
    expected = (F.normalize(queries, dim=-1) @ F.normalize(kept, dim=-1).T).topk(4, dim=1).indices
    assert valid.all()
    for i in range(6):
        assert torch.equal(neighbours[i], kept[expected[i]])


def test_selection_skips_self_duplicates_and_carries_no_gradient():
    memory = SelectableCrossBatchMemory(dim=3, size=10, top_k=2)
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.9, 0.1, 0]], requires_grad=True)
    memory.enqueue(x)
    assert not memory.buffer.requires_grad
    neighbours, valid = memory.select(x[:1])
    assert not neighbours.requires_grad
    assert torch.allclose(neighbours[0, 0], torch.tensor([0.9, 0.1, 0]))   # not the query itself
    (x * 2).sum().backward()
    assert memory.buffer.grad is None


def test_state_dict_round_trip_restores_the_queue():
    memory = SelectableCrossBatchMemory(dim=2, size=4)
    memory.enqueue(torch.randn(6, 2))
    restored = SelectableCrossBatchMemory(dim=2, size=4)
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored.entries(), memory.entries())
    restored.enqueue(torch.ones(1, 2))
    memory.enqueue(torch.ones(1, 2))
    assert torch.equal(restored.entries(), memory.entries())
