import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from course import plots  # noqa: E402


def test_show_digits_draws_one_panel_per_image_with_labels():
    fig = plots.show_digits(torch.rand(12, 64), labels=torch.arange(12), ncols=5, title="t")
    axes = fig.get_axes()
    assert len(axes) == 15  # 3 rows of 5, the last 3 blank
    assert sum(1 for ax in axes if ax.images) == 12
    assert axes[11].get_title() == "11"
    plt.close(fig)


def test_plot_samples_marks_the_median():
    fig, ax = plt.subplots()
    plots.plot_samples([0.001, 0.003, 0.002], "x", ax=ax, unit="ms")
    median_line = ax.lines[-1]
    assert list(median_line.get_ydata()) == [2.0, 2.0]
    plt.close(fig)


def test_defaults_use_a_colour_blind_safe_palette():
    import matplotlib as mpl

    from course import plots

    plots.apply_defaults()
    assert mpl.rcParams["axes.prop_cycle"].by_key()["color"] == plots.OKABE_ITO
    assert mpl.rcParams["image.cmap"] == "viridis"
