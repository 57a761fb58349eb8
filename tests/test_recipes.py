"""The recipes against docs/recipes.md, SVHN's lambda table and step warm-up, and the old MNIST
recipe that the demo and the committed studies keep."""
import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from gradalign_fast.cli import make_parser
from gradalign_fast.cli.commands import demo
from gradalign_fast.training import checkpoint, methods, recipe, trainer
from gradalign_fast.training.models import build_model
from gradalign_fast.training.trainer import TrainConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
NONE = "—"


def _doc_tables() -> dict:
    """{recipe name: [(field, method or None, ours cell)]} from docs/recipes.md."""
    tables, name = {}, None
    for line in DOC.read_text().splitlines():
        head = re.match(r"## Recipe `(\w+)`$", line)
        if head:
            name = head.group(1)
            tables[name] = []
        elif name and line.startswith("| ") and not line.startswith(("| field", "|---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            field = re.match(r"(.+?)(?: \[(\w+)\])?$", cells[0])
            tables[name].append((field.group(1), field.group(2), cells[1]))
    return tables


def _value(cell: str):
    text = cell.strip("`")
    frac = re.fullmatch(r"(\d+(?:\.\d+)?)/255", text)
    if frac:
        return float(frac.group(1)) / 255
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def test_every_recipe_has_a_table_and_every_field_a_row():
    tables = _doc_tables()
    assert sorted(tables) == sorted(recipe.RECIPES)
    names = {f.name for f in fields(recipe.Recipe)}
    for name, rows in tables.items():
        assert names <= {f for f, m, _ in rows if m is None}, name


@pytest.mark.parametrize("name", sorted(recipe.RECIPES))
def test_recipe_matches_its_table(name):
    names = {f.name for f in fields(recipe.Recipe)}
    for field, method, cell in _doc_tables()[name]:
        if field not in names:
            assert cell == NONE, f"{name}: row {field!r} is no Recipe field, its ours is {cell}"
            continue
        assert cell.startswith("`"), f"{name}.{field}: ours must be a value in backticks"
        got = getattr(recipe.recipe_for(name, method or "fgsm"), field)
        want = _value(cell)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, \
            f"{name}.{field} [{method}]: recipe {got!r}, docs/recipes.md {want!r}"


def test_the_authors_and_wong_recipes():
    c10, svhn, mnist = (recipe.RECIPES[n] for n in ("cifar10", "svhn", "mnist"))
    assert (c10.optimizer, c10.init, c10.normalize, c10.model) == ("sgd", "authors", False,
                                                                   "preact_resnet18")
    assert (svhn.lam_table, svhn.reported_model, svhn.lr_max, svhn.epochs) == ("svhn", "best",
                                                                              0.05, 15)
    assert (mnist.optimizer, mnist.lr_max, mnist.batch_size, mnist.epochs) == ("adam", 5e-3,
                                                                              100, 10)
    assert (mnist.eps_warmup_epochs, mnist.normalize, mnist.momentum) == (0.0, False, None)
    assert recipe.default_recipe("mnist") == "mnist"
    assert recipe.default_recipe("mnist_subset") == "mnist_sgd_ramp"


def test_lambda_for_eps_per_dataset():
    lam = recipe.lambda_for_eps
    assert [lam(e, "svhn") for e in (1, 8, 12)] == pytest.approx([1.657, 2.5, 3.162], abs=1e-3)
    assert [lam(e, "cifar10") for e in (1, 8, 16)] == pytest.approx([0.027, 0.2, 2.0])
    assert lam(8) == lam(8, "cifar10")
    with pytest.raises(ValueError, match="no lambda table for 'mnist'"):
        lam(8, "mnist")
    cfg = trainer.resolve(TrainConfig(dataset="mnist_subset", recipe="svhn", model="mnist_cnn",
                                      eps=8 / 255, device="cpu", eval_attacks="clean"))
    assert cfg.lam == pytest.approx(2.5)


def test_svhn_ramps_fgsms_step_not_eps():
    fgsm, pgd = recipe.recipe_for("svhn", "gradalign"), recipe.recipe_for("svhn", "pgd")
    assert (fgsm.alpha_warmup_epochs, fgsm.eps_warmup_epochs) == (5, 0.0)
    assert (pgd.alpha_warmup_epochs, pgd.eps_warmup_epochs) == (0.0, 5)
    assert recipe.alpha_warmup_epochs("svhn", "fgsm", 15) == 5
    assert recipe.alpha_warmup_epochs("svhn", "fgsm", 3) == pytest.approx(1.0)  # 5/15 of 3
    assert recipe.alpha_warmup_epochs("svhn", "pgd", 15) == 0.0


def test_step_scale_shrinks_the_step_and_keeps_etas_radius():
    torch.manual_seed(0)
    net = build_model("mnist_cnn", 10, 1)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    ga = methods.make_method("gradalign", 0.3, lam=1.0)
    ga.set_step_scale(0.25)
    delta, _ = ga.perturb(net, x, y)
    assert delta.abs().max().item() == pytest.approx(0.075)
    assert ga._loss.eps == 0.3
    rs = methods.make_method("fgsm_rs", 0.3)
    rs.set_step_scale(0.0)
    torch.manual_seed(1)
    start, _ = rs.perturb(net, x, y)  # a zero step: the random start, in the eps-ball
    assert start.abs().max().item() <= 0.3 + 1e-6
    with pytest.raises(ValueError, match="step scale"):
        rs.set_step_scale(1.5)


def test_trainer_applies_the_step_warmup(monkeypatch, tmp_path):
    """The svhn recipe on the shipped MNIST sample: the FGSM step grows per iteration over the
    (scaled) warm-up while eps stays full."""
    seen = []
    step = trainer.train_step

    def record(method, *a, **kw):
        seen.append((method.step_scale, method.eps))
        return step(method, *a, **kw)

    monkeypatch.setattr(trainer, "train_step", record)
    trainer.train(TrainConfig(method="fgsm", dataset="mnist_subset", recipe="svhn",
                              model="mnist_cnn", eps=0.3, epochs=3, n_train=128, n_monitor=32,
                              n_eval=16, batch_size=64, eval_attacks="clean", monitor_every=0,
                              progress=False, out_dir=str(tmp_path)))
    # 2 steps an epoch, warm-up 5/15 of 3 epochs = 1 epoch = 2 steps
    assert [s for s, _ in seen] == pytest.approx([0, 0.5, 1, 1, 1, 1])
    assert all(e == 0.3 for _, e in seen)


def test_the_demo_keeps_the_old_mnist_recipe():
    """The demo's runs resolve to the values of the project's MNIST recipe before Wong et al.'s
    became `mnist` (SGD 0.05, momentum 0.9, batch 128, eps ramp, normalised inputs)."""
    _, parser = make_parser("demo")
    for dataset in ("mnist_subset", "mnist"):
        args = parser.parse_args(["--dataset", dataset, "--data-dir", "x"] if dataset == "mnist"
                                 else [])
        cfg = trainer.resolve(demo.run_config(args, "gradalign", 90 / 255, Path("out"),
                                              "clean"))
        assert (cfg.recipe, cfg.model, cfg.optimizer, cfg.lr_max, cfg.momentum, cfg.wd,
                cfg.batch_size, cfg.lr_schedule, cfg.eps_warmup_epochs, cfg.epochs,
                cfg.lam) == ("mnist_sgd_ramp", "mnist_cnn", "sgd", 0.05, 0.9, 0.0, 128,
                             "cyclic", 4.0, 8, 2.0)
    torch.manual_seed(0)
    net = checkpoint.model_from_config({"dataset": "mnist", "model": "mnist_cnn",
                                        "recipe": cfg.recipe})
    torch.manual_seed(0)
    old = build_model("mnist_cnn", 10, 1, (0.1307,), (0.3081,))  # how it was built before
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                   old.state_dict().values()))
