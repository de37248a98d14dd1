"""ADS: distinct selections, deterministic inference, gradients reaching the logits."""
import torch

from smec_hf.smec.ads import AdaptiveDimensionSelector


def test_training_selection_is_k_distinct_indices_and_a_permutation():
    torch.manual_seed(0)
    ads = AdaptiveDimensionSelector(32, 8).train()
    x = torch.arange(32.0).repeat(3, 1)
    for _ in range(20):
        out = ads(x)
        kept = out[0, :8].round().long()
        assert len(set(kept.tolist())) == 8
        assert sorted(out[0].round().long().tolist()) == list(range(32))   # nothing lost or duplicated


def test_inference_is_noise_free_top_k_of_the_logits():
    ads = AdaptiveDimensionSelector(10, 3)
    with torch.no_grad():
        ads.logits.copy_(torch.tensor([0.0, 5, 0, 0, 9, 0, 0, 7, 0, 0]))
    ads.eval()
    x = torch.randn(4, 10)
    first, second = ads(x), ads(x)
    assert torch.equal(first, second)
    assert ads.selected_indices().tolist() == [1, 4, 7]
    assert torch.equal(first[:, :3], x[:, [1, 4, 7]])


def test_gradients_reach_the_logits_and_the_forward_values_are_unscaled():
    torch.manual_seed(1)
    ads = AdaptiveDimensionSelector(16, 4).train()
    x = torch.randn(5, 16)
    out = ads(x)
    assert torch.allclose(out.abs().sum(0).sort().values, x.abs().sum(0).sort().values)
    out[:, :4].pow(2).sum().backward()
    assert ads.logits.grad is not None and ads.logits.grad.abs().sum() > 0


def test_training_moves_the_selection_towards_useful_coordinates():
    torch.manual_seed(0)
    ads = AdaptiveDimensionSelector(12, 3, temperature=0.5).train()
    opt = torch.optim.Adam([ads.logits], lr=0.1)
    useful = torch.zeros(12)
    useful[[2, 5, 9]] = 1.0
    x = useful.repeat(8, 1)          # only the useful coordinates carry signal into the kept prefix
    for _ in range(300):
        opt.zero_grad()
        (-ads(x)[:, :3].sum()).backward()
        opt.step()
    assert ads.eval().selected_indices().tolist() == [2, 5, 9]
