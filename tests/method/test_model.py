import pytest
import torch
import torch.nn.functional as F

from anil.model import ConvBody, make_head


@pytest.mark.parametrize("size,channels,dim", [(28, 1, 64), (32, 3, 256), (84, 3, 1600)])
def test_feature_size_is_derived_from_image_size_and_width(size, channels, dim):
    body = ConvBody(channels, size)
    assert body.feature_dim == dim
    assert body(torch.rand(4, channels, size, size)).shape == (4, dim)
    assert ConvBody(channels, size, hidden=32).feature_dim == dim // 2


def test_depth_sets_the_blocks_and_too_many_poolings_are_refused():
    body = ConvBody(1, 28, hidden=16, depth=2)
    assert len(body.blocks) == 2 and body.feature_dim == 16 * 7 * 7
    with pytest.raises(ValueError, match="shrink"):
        ConvBody(1, 8, depth=4)


def reference_forward(body, x):
    """learn2learn CNN4 / MAML ConvNet written out with plain functional ops:
    conv3x3(pad 1) → batch norm with batch statistics → ReLU → max-pool 2 → … → flatten."""
    for block in body.blocks:
        x = F.conv2d(x, block.conv.weight, block.conv.bias, padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + block.norm.eps)
        x = x * block.norm.weight[None, :, None, None] + block.norm.bias[None, :, None, None]
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def test_layer_order_and_batch_statistics_in_train_and_eval_mode():
    torch.manual_seed(0)
    body = ConvBody(3, 32).double()
    x = torch.rand(10, 3, 32, 32, dtype=torch.float64)
    expected = reference_forward(body, x)
    torch.testing.assert_close(body(x), expected)
    body.eval()  # no running statistics: eval mode normalises with the batch too
    torch.testing.assert_close(body(x), expected)


def test_each_call_normalises_with_its_own_task():
    torch.manual_seed(1)
    body = ConvBody(1, 28)
    a, b = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28) * 3
    za = body(a)
    body(b)  # another task in between changes nothing
    torch.testing.assert_close(body(a), za)
    assert not torch.allclose(body(torch.cat([a, b]))[:6], za), "statistics are per call"


def test_initialisation_matches_learn2learn():
    torch.manual_seed(2)
    body, head = ConvBody(3, 84), make_head(1600, 5)
    for block in body.blocks:
        w = block.conv.weight
        fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
        bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert (block.conv.bias == 0).all() and (block.norm.bias == 0).all()
        g = block.norm.weight
        assert (g >= 0).all() and (g <= 1).all() and g.std() > 0.1  # U(0, 1)
        assert not block.norm.track_running_stats
    bound = (6 / (1600 + 5)) ** 0.5
    assert head.weight.abs().max() <= bound and (head.bias == 0).all()
