"""The training node's progress bar is a share of the run's time, not of its items."""
from saemnesia_core.progress import TimeWeightedProgress, guess_step_seconds


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_bar_follows_time_across_collection_and_training():
    clock = Clock()
    # 10 prompts of 6 s, then 100 steps of 0.6 s: each phase is half of the run
    p = TimeWeightedProgress(10, 100, step_seconds_guess=0.6, clock=clock)
    seen = []
    for i in range(1, 11):
        clock.t += 6
        seen.append(p.collected(i))
    assert seen[4] == (0.25, "collecting 5/10")  # half the prompts = a quarter of the run, not 5/110
    assert abs(seen[-1][0] - 0.5) < 1e-9
    for s in range(1, 101):
        clock.t += 0.6
        f, text = p.trained(s)
        seen.append((f, text))
    assert seen[10 + 49][1] == "training step 50/100" and abs(seen[10 + 49][0] - 0.75) < 0.02
    assert seen[-1][0] == 1.0
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))  # never goes back


def test_a_bad_guess_never_moves_the_bar_back():
    clock = Clock()
    p = TimeWeightedProgress(4, 10, step_seconds_guess=100.0, clock=clock)  # guessed far too slow
    for i in range(1, 5):
        clock.t += 1
        p.collected(i)
    before = p.fraction
    clock.t += 0.01
    f, _ = p.trained(1)
    assert f >= before
    for s in range(2, 11):
        clock.t += 0.01
        f, _ = p.trained(s)
    assert f == 1.0


def test_step_guess_is_positive_and_grows_with_the_batch():
    small = guess_step_seconds(64, 512, 256)
    assert small > 0
    assert guess_step_seconds(64, 512, 65536) > small
