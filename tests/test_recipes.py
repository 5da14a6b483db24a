import dataclasses
import json

import pytest

from autokd.errors import AutokdError
from autokd.recipes import PRESETS, Recipe, list_presets


def test_presets_are_listed_and_follow_the_references():
    names = {"kd", "dkd", "dist", "nkd", "kd_ls", "none", "fitnet", "minilm", "kd_adamw"}
    assert names <= set(list_presets())
    kd = Recipe.load("kd")
    assert (kd.loss, kd.loss_params, kd.ce_weight, kd.kd_weight) == ("kd", {"temperature": 4.0}, 0.1, 0.9)
    assert (kd.optimizer, kd.lr, kd.momentum, kd.weight_decay, kd.batch_size) == ("sgd", 0.05, 0.9, 5e-4, 64)
    dkd = Recipe.load("dkd")
    assert dkd.loss_params == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20.0}
    assert Recipe.load("dist").loss_params == {"beta": 1.0, "gamma": 1.0, "tau": 1.0}
    assert Recipe.load("nkd").loss_params == {"temperature": 1.0, "gamma": 1.5}
    ls = Recipe.load("kd_ls")
    assert ls.logit_standardize and ls.loss_params["temperature"] == 2.0 and ls.kd_weight == 9.0
    assert Recipe.load("fitnet").feature_loss == "fitnet"
    minilm = Recipe.load("minilm")
    assert minilm.feature_params == {"relation_heads": 12} and minilm.optimizer == "adamw"
    assert not Recipe.load("none").needs_teacher and kd.needs_teacher


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_yaml_and_json(name, tmp_path):
    recipe = Recipe.load(name)
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"recipe{suffix}"
        recipe.save(path)
        assert Recipe.load(path) == recipe
        assert hash(Recipe.load(path)) == hash(recipe)
    assert Recipe.from_dict(json.loads(recipe.to_json())) == recipe


def test_partial_yaml_gets_defaults_and_reads_exponent_strings(tmp_path):
    path = tmp_path / "mine.yml"
    path.write_text("loss: dkd\nloss_params: {beta: 2}\nlr: 5e-4\nbatch_size: 128.0\n")
    recipe = Recipe.load(path)
    assert recipe.lr == 5e-4 and isinstance(recipe.lr, float)  # YAML reads 5e-4 as a string
    assert recipe.batch_size == 128 and isinstance(recipe.batch_size, int)
    assert recipe.loss_params == {"alpha": 1.0, "beta": 2.0, "temperature": 4.0, "warmup_epochs": 20.0}


def test_with_epochs_scales_the_warmups():
    short = Recipe.load("dkd").replace(warmup_epochs=24).with_epochs(30)
    assert short.epochs == 30
    assert short.loss_params["warmup_epochs"] == pytest.approx(2.5)
    assert short.warmup_epochs == pytest.approx(3.0)
    assert Recipe.load("dkd").replace(epochs=30).loss_params["warmup_epochs"] == 20.0


def test_replace_resets_the_params_of_a_new_loss():
    dist = Recipe.load("dkd").replace(loss="dist")
    assert dist.loss_params == {"beta": 1.0, "gamma": 1.0, "tau": 1.0}
    assert Recipe.load("minilm").replace(feature_loss=None).feature_params == {}
    assert Recipe.load("dkd").replace(lr=0.01).loss_params["beta"] == 8.0


def test_recipe_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe.load("kd").lr = 1.0


def test_unknown_key_names_it_and_the_allowed_ones():
    with pytest.raises(AutokdError, match=r"recipe key\(s\) temprature: allowed are loss, loss_params"):
        Recipe.from_dict({"loss": "kd", "temprature": 4})


def test_unknown_loss_param_lists_the_allowed_ones():
    allowed = "allowed are alpha, beta, temperature, warmup_epochs"
    with pytest.raises(AutokdError, match=f"gamma for loss 'dkd': {allowed}"):
        Recipe(loss="dkd", loss_params={"gamma": 1.0})
    with pytest.raises(AutokdError, match="allowed are none"):
        Recipe(loss="none", loss_params={"temperature": 4.0})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"loss": "kld"}, "unknown loss 'kld': allowed are none, kd, dkd, dist, nkd"),
        ({"feature_loss": "at"}, "unknown feature_loss 'at'"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'"),
        ({"schedule": "step"}, "unknown schedule 'step'"),
        ({"augmentation": "randaug"}, "unknown augmentation 'randaug'"),
        ({"lr": 0}, "'lr' must be > 0"),
        ({"momentum": 1.0}, "'momentum' must be >= 0.0 and < 1.0"),
        ({"warmup_epochs": 300}, "'warmup_epochs' must be"),
        ({"batch_size": 0}, "'batch_size' must be >= 1"),
        ({"batch_size": 12.5}, "'batch_size' must be int"),
        ({"lr": "fast"}, "'lr' must be float"),
        ({"logit_standardize": "yes"}, "'logit_standardize' must be bool"),
        ({"loss_params": {"temperature": 0}}, "temperature must be > 0"),
        ({"loss_params": {"temperature": -1}}, "temperature must be > 0"),
        ({"feature_loss": "minilm", "feature_params": {"relation_heads": 2.5}}, "relation_heads must be an"),
        ({"feature_params": {"relation_heads": 4}}, "feature_params are set but feature_loss is not"),
        ({"loss": "none", "logit_standardize": True}, "logit_standardize needs a logit loss"),
        ({"feature_loss": "fitnet", "teacher_cache": True}, "teacher_cache does not store"),
    ],
)
def test_bad_fields_raise_a_clear_error(fields, message):
    with pytest.raises(AutokdError, match=message):
        Recipe(**fields)


def test_timm_augmentation_strings_are_accepted():
    for name in ("rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original", "none", "standard"):
        assert Recipe(augmentation=name).augmentation == name


def test_load_rejects_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(AutokdError, match="unknown recipe 'dkd2': use a preset"):
        Recipe.load("dkd2")
    with pytest.raises(AutokdError, match="does not exist"):
        Recipe.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(AutokdError, match="must be a mapping"):
        Recipe.load(bad)
