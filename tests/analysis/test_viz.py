"""Tests for step_jepa.analysis.embed, plots and the embed/plot commands: collapse diagnostics, figures, `step-jepa embed` and `step-jepa plot`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import step_jepa.analysis.embed as viz
from step_jepa.analysis.plots import (
    pca_2d,
    plot_cosines,
    plot_projection,
    plot_runs,
    short_labels,
)
from step_jepa.cli.main import main as cli_main
from step_jepa.method.collapse import (
    ViewSet,
    effective_rank,
    mean_pairwise_cos,
    negative_partners,
    retrieval_accuracy,
    view_metrics,
)

PNG = b"\x89PNG\r\n\x1a\n"


def viewset(v1: np.ndarray, v2: np.ndarray, label: str = "m", trained: bool = True) -> ViewSet:
    n = len(v1)
    return ViewSet(
        label=label,
        model=label,
        v1=v1.astype(np.float32),
        v2=v2.astype(np.float32),
        ids=np.array([f"r{i}" for i in range(n)]),
        example_index=np.arange(n),
        pair_index=np.zeros(n, dtype=np.int64),
        predictors_trained=trained,
    )


def is_png(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


# --------------------------------------------------------------------------- diagnostics (fast)


def test_metrics_tell_prediction_from_collapse() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16))
    predicted = view_metrics(viewset(x, x + 0.05 * rng.normal(size=x.shape)), batch_size=8)
    assert predicted["raw"]["retrieval_acc_all"] == 1.0
    assert predicted["raw"]["gap"] > 0.5
    assert predicted["view1_effective_rank"] > 8

    common = rng.normal(size=(1, 16))
    collapsed = view_metrics(viewset(common + 1e-4 * x, common + 1e-4 * rng.normal(size=x.shape)))
    assert collapsed["raw"]["pos_cos"]["mean"] > 0.99 and abs(collapsed["raw"]["gap"]) < 1e-3
    assert collapsed["view1_pairwise_cos"] > 0.99  # everything points the same way
    # Centring removes the shared direction: what is left carries no pair information.
    assert collapsed["centered"]["retrieval_acc_all"] < 0.2
    assert collapsed["retrieval_chance"] == pytest.approx(1 / 40)


def test_retrieval_in_batches_and_pairwise_cos() -> None:
    eye = np.eye(6)
    assert retrieval_accuracy(eye, eye, chunk=4) == 1.0
    assert retrieval_accuracy(eye, eye[::-1]) == 0.0
    assert mean_pairwise_cos(eye) == pytest.approx(0.0)
    assert mean_pairwise_cos(np.ones((5, 3))) == pytest.approx(1.0)
    assert effective_rank(np.ones((5, 3))) == 0.0


def test_negatives_come_from_other_examples() -> None:
    ex = np.array([0, 0, 0, 1, 1, 2])
    neg = negative_partners(ex, seed=1)
    assert all(ex[j] != ex[i] for i, j in enumerate(neg))
    assert (negative_partners(np.zeros(3, dtype=int)) == -1).all()


def test_short_labels_are_unique_suffixes(tmp_path) -> None:
    runs = [tmp_path / "sft" / "seed0", tmp_path / "jepa" / "seed0", tmp_path / "x"]
    assert short_labels(runs) == ["sft/seed0", "jepa/seed0", f"{tmp_path.name}/x"]
    assert viz.model_label("runs/jepa/seed1/final") == "jepa/seed1"


# --------------------------------------------------------------------------- figures (fast)


def test_projection_links_each_pair(tmp_path) -> None:
    from matplotlib.collections import LineCollection, PathCollection

    rng = np.random.default_rng(1)
    sets = [
        viewset(rng.normal(size=(12, 8)), rng.normal(size=(12, 8)), "a"),
        viewset(rng.normal(size=(9, 8)), rng.normal(size=(9, 8)), "b", trained=False),
    ]
    fig = plot_projection(sets, tmp_path / "pca.png")
    assert is_png(tmp_path / "pca.png")
    assert len(fig.axes) == 2  # the two models side by side
    for ax, vs in zip(fig.axes, sets):
        lines = [c for c in ax.collections if isinstance(c, LineCollection)]
        points = [c for c in ax.collections if type(c) is PathCollection]
        assert len(lines) == 1 and len(lines[0].get_segments()) == len(vs.v1)
        assert [len(p.get_offsets()) for p in points] == [len(vs.v1), len(vs.v2)]
    assert "UNTRAINED" in fig.axes[1].get_title()
    try:
        import sklearn  # noqa: F401  (only probing whether it is installed)
    except ImportError:
        assert plot_projection(sets, tmp_path / "tsne.png", "tsne") is None
        assert not (tmp_path / "tsne.png").exists()


def inside_figure(fig, artist) -> bool:
    """Whether a drawn artist (a title, a label) lies within the saved figure, i.e. is not clipped."""
    renderer = fig.canvas.get_renderer()
    box, page = artist.get_window_extent(renderer), fig.bbox
    return box.x0 >= page.x0 - 0.5 and box.x1 <= page.x1 + 0.5 and box.y0 >= page.y0 - 0.5 and box.y1 <= page.y1 + 0.5


def test_projection_axes_say_which_component_and_its_variance(tmp_path) -> None:
    rng = np.random.default_rng(3)
    v1 = rng.normal(size=(20, 6)) * np.array([5.0, 2.0, 1.0, 1.0, 1.0, 1.0])  # PC 1 dominates
    vs = viewset(v1, v1 + 0.1 * rng.normal(size=v1.shape))
    fig = plot_projection([vs], tmp_path / "pca.png")
    fig.canvas.draw()
    ax = fig.axes[0]
    _, var = pca_2d(np.concatenate([vs.v1, vs.v2]))
    assert (
        ax.get_xlabel() == f"PC 1 ({100 * var[0]:.1f} % var.)"
        and ax.get_ylabel() == f"PC 2 ({100 * var[1]:.1f} % var.)"
    )
    assert var[0] > var[1] > 0
    assert all(inside_figure(fig, t) for t in (ax.title, ax.xaxis.label, ax.yaxis.label))


def test_cosine_histograms_grid(tmp_path) -> None:
    rng = np.random.default_rng(2)
    sets = [viewset(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)), n) for n in ("a", "b")]
    metrics = [view_metrics(vs) for vs in sets]
    fig = plot_cosines(sets, metrics, tmp_path / "cos.png")
    assert is_png(tmp_path / "cos.png")
    assert len(fig.axes) == 4  # rows raw/centred × one column per model
    for ax in fig.axes:
        assert len(ax.get_legend().get_texts()) == 2  # same pair vs other example


# --------------------------------------------------------------------------- loss curves


def write_metrics(run: Path, jepa: bool, steps: int = 4) -> Path:
    run.mkdir(parents=True)
    with (run / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            rec = {"step": s, "loss": 3.0 - 0.1 * s, "lm_loss": 2.9 - 0.1 * s}
            if jepa:
                rec["jepa_loss"] = 0.5 / s
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"step": 2, "loss": 99.0, "lm_loss": 99.0}) + "\n")  # a resumed run repeats step 2
        f.write(json.dumps({"step": steps, "train_loss": 2.5}) + "\n")  # the trainer's final summary record
    return run


def test_plot_two_runs_one_line_each(tmp_path) -> None:
    sft = write_metrics(tmp_path / "sft" / "seed0", jepa=False)
    jepa = write_metrics(tmp_path / "jepa" / "seed0", jepa=True)
    fig = plot_runs([sft, jepa], tmp_path / "curves.png")
    assert is_png(tmp_path / "curves.png")
    assert [ax.get_title() for ax in fig.axes][1:] == ["LM loss", "JEPA loss"]
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 1]  # SFT has no JEPA loss
    total = fig.axes[0].lines
    assert [ln.get_label() for ln in total] == ["sft/seed0", "jepa/seed0"]
    assert list(total[0].get_xdata()) == [1, 2, 3, 4] and total[0].get_ydata()[1] == 99.0
    assert fig.axes[2].lines[0].get_color() == total[1].get_color()  # one colour per run everywhere


def test_loss_curves_have_whole_step_ticks(tmp_path) -> None:
    """A 4-step run would get ticks at 1.0, 1.5, 2.0, ...: steps are integers."""
    fig = plot_runs([write_metrics(tmp_path / "a", jepa=True)], tmp_path / "curves.png")
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
        assert inside_figure(fig, ax.title)


def test_plot_cli(tmp_path, capsys) -> None:
    a = write_metrics(tmp_path / "a", jepa=True)
    out = tmp_path / "p.png"
    assert cli_main(["plot", str(a), str(a / "metrics.jsonl"), "--out", str(out), "--metrics", "loss"]) == 0
    assert is_png(out)
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["plot", str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.parametrize("command", ["plot", "embed"])
def test_plotting_commands_without_matplotlib_fail_at_start(tmp_path, monkeypatch, capsys, command) -> None:
    """embed would load models and extract views for a minute before drawing: it must stop first."""
    import sys

    def must_not_run(*a, **kw):
        raise AssertionError(f"{command} did work without matplotlib")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    from step_jepa.cli import embed as embed_command
    from step_jepa.cli import plot as plot_command

    monkeypatch.setattr(embed_command, "run_embed", must_not_run)
    monkeypatch.setattr(plot_command, "plot_runs", must_not_run)
    args = (
        ["plot", str(write_metrics(tmp_path / "a", jepa=False))]
        if command == "plot"
        else ["embed", "--model", "unused-model", "--out", str(tmp_path / "emb")]
    )
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"step-jepa {command}: error:" in err and "needs matplotlib" in err
    assert not (tmp_path / "emb").exists()


# --------------------------------------------------------------------------- embed on tiny models (slow)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two random tiny models: one with K=2 predictor tokens in its tokenizer (as a JEPA run saves
    it), one without (as an SFT run saves it)."""
    from step_jepa.models.loading import add_predictor_tokens
    from step_jepa.models.tiny import build_tiny_model, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("embed_models")
    tok = build_tiny_tokenizer("chatml")
    plain = build_tiny_model(len(tok), seed=1)
    plain.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    model = build_tiny_model(len(tok), seed=2)
    add_predictor_tokens(model, tok, 2)
    model.save_pretrained(root / "jepa")
    tok.save_pretrained(root / "jepa")
    return root / "jepa", root / "sft"


@pytest.mark.slow
def test_embed_one_model(tiny_models, tmp_path, capsys) -> None:
    jepa, _ = tiny_models
    out = tmp_path / "emb"
    assert cli_main(["embed", "--model", str(jepa), "-n", "12", "--out", str(out), "--batch_size", "5"]) == 0
    printed = capsys.readouterr().out
    assert "untrained" not in printed.lower() and "retrieval" in printed
    z = np.load(out / "embeddings_model1.npz")
    assert z["v1"].shape == z["v2"].shape == (12, 64)  # pairs=first: one pair per example, hidden 64
    assert list(z["ids"]) == [f"gen-1000-{i}" for i in range(12)]
    assert (z["pair_index"] == 0).all() and list(z["example_index"]) == list(range(12))
    assert np.isfinite(z["v1"]).all() and not np.allclose(z["v1"], z["v2"])
    report = json.loads((out / "embed_metrics.json").read_text())
    m = report["models"][0]
    assert m["predictors"] == 2 and m["predictors_trained"] is True and m["pairs"] == 12
    assert 0.0 <= m["metrics"]["raw"]["retrieval_acc_all"] <= 1.0
    assert is_png(out / "pca.png") and is_png(out / "cosine_hist.png")
    assert report["view_layer"] == -1

    # --layer reads the views from another decoder layer (as --jepa_layer does in training).
    assert cli_main(["embed", "--model", str(jepa), "-n", "12", "--out", str(tmp_path / "l0"), "--layer", "0"]) == 0
    z0 = np.load(tmp_path / "l0" / "embeddings_model1.npz")
    assert z0["v1"].shape == (12, 64) and not np.allclose(z0["v1"], z["v1"])
    assert json.loads((tmp_path / "l0" / "embed_metrics.json").read_text())["view_layer"] == 0


@pytest.mark.slow
def test_embed_two_models_all_pairs_from_file(tiny_models, tmp_path, capsys) -> None:
    from step_jepa.data.synthetic import generate_problems

    jepa, sft = tiny_models
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_problems(6, seed=7)))
    out = tmp_path / "emb2"
    report = viz.run_embed([str(jepa), str(sft)], data=str(data), n=5, out=out, pairs="all", batch_size=4)
    assert "UNTRAINED" in capsys.readouterr().out  # the SFT model got fresh predictor tokens
    a, b = (np.load(out / f"embeddings_model{k}.npz") for k in (1, 2))
    assert a["v1"].shape[0] > 5 and a["v1"].shape == b["v1"].shape  # several pairs per example
    assert sorted(set(a["example_index"].tolist())) == list(range(5))
    assert [m["predictors_trained"] for m in report["models"]] == [True, False]
    assert [m["predictors"] for m in report["models"]] == [2, 2]  # K follows --predictors default: first model's
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "pca.png").shape[1] > 1000  # two panels side by side
    assert is_png(out / "cosine_hist.png")


@pytest.mark.slow
def test_embed_applies_the_trained_predictor_head(tiny_models, tmp_path, capsys) -> None:
    """A run trained with --jepa_predictor_head mlp: view 1 is head(view 1), as the JEPA loss saw it."""
    import shutil

    import torch
    import yaml
    from safetensors.torch import save_file

    from step_jepa.method.model import PredictorHead
    from step_jepa.training.checkpoints import HEAD_FILE

    run = tmp_path / "jepa_head"
    shutil.copytree(tiny_models[0], run)
    torch.manual_seed(3)
    head = PredictorHead(64)
    torch.nn.init.normal_(head.net[-1].weight, std=0.5)  # not the identity it starts as
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(run / HEAD_FILE))
    (run / "step_jepa_config.yaml").write_text(yaml.safe_dump({"jepa_predictor_head": "mlp"}))

    with_head = viz.run_embed([str(run)], data=None, n=6, out=tmp_path / "h", tsne=False)
    assert "view 1 after the predictor head" in capsys.readouterr().out
    without = viz.run_embed([str(run)], data=None, n=6, out=tmp_path / "raw", tsne=False, use_head=False)
    assert with_head["models"][0]["view1"] == "after the predictor head"
    assert without["models"][0]["view1"] == "hidden state (no predictor head)"
    h, raw = (np.load(tmp_path / d / "embeddings_model1.npz") for d in ("h", "raw"))
    np.testing.assert_array_equal(h["v2"], raw["v2"])  # the head is on view 1 only
    assert not np.allclose(h["v1"], raw["v1"], atol=1e-3)
    with torch.no_grad():
        expected = head(torch.from_numpy(raw["v1"])).numpy()
    np.testing.assert_allclose(h["v1"], expected, rtol=1e-4, atol=1e-4)

    # A saved config that says another head type wins over a stray head file.
    (run / "step_jepa_config.yaml").write_text(yaml.safe_dump({"jepa_predictor_head": "none"}))
    assert viz.load_predictor_head(str(run), 64) is None
    assert viz.load_predictor_head(str(tiny_models[1]), 64) is None  # SFT dir: no head file
