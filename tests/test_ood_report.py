"""OOD report presentation: legends that hide no bar, and a word of why the closest task and the smallest
Fréchet distance can name different tasks."""
import numpy as np
import pytest

from ood import report

TASKS = ["metaworld_reach", "metaworld_push", "metaworld_door_open"]


@pytest.mark.parametrize("frechet", [[5.0, 4.0, 3.0], [3.0, 0.5, 2.0], [200.0, 1.0, 1.5]])
def test_distance_legends_cover_no_bar(frechet):
    rng = np.random.default_rng(0)
    student_d = rng.uniform(1, 50, (12, 3))
    id_d, id_labels = rng.uniform(1, 5, (9, 3)), np.repeat(np.arange(3), 3)
    fig = report.distance_figure(TASKS, dict(zip(TASKS, frechet)), dict(zip(TASKS, [1.0, 1.2, 0.9])),
                                 student_d, id_d, id_labels)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [patch.get_window_extent(renderer) for patch in ax.patches]
        assert bars and not any(legend.overlaps(bar) for bar in bars), ax.get_title()
    import matplotlib.pyplot as plt

    plt.close(fig)


def student(hist, frechet):
    return {"closest_task_histogram": dict(zip(TASKS, hist)), "frechet": dict(zip(TASKS, frechet))}


def test_closest_task_and_frechet_disagreement_is_explained():
    note = report.closest_vs_frechet_note(student([7, 2, 1], [4.0, 1.0, 3.0]))
    assert "most episodes lie closest to reach" in note and "nearest to push" in note
    assert report.closest_vs_frechet_note(student([7, 2, 1], [1.0, 4.0, 3.0])) is None  # they agree
    assert report.closest_vs_frechet_note(student([7, 2, 1], [None, None, None])) is None  # n/a
