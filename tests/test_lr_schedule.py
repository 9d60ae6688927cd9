import pytest

from dorl.lr_schedule import warmup_cosine, warmup_steps


def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [warmup_cosine(step, total_steps=20, warmup_steps=4) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert factors[20] == pytest.approx(0.0, abs=1e-12) and factors[12] == pytest.approx(0.5)


@pytest.mark.parametrize("epochs, per_epoch, expected", [(0.5, 6, 3), (0, 6, 1), (1, 40, 40)])
def test_warm_up_is_counted_in_whole_steps_and_never_zero(epochs, per_epoch, expected):
    assert warmup_steps(epochs, per_epoch) == expected
