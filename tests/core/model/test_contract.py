"""The method contract: the registry and the declared parameters, the estimator contract (named parameters,
get/set/clone), the held-out split, and every registered method fitting, scoring and round-tripping."""

from __future__ import annotations

import inspect
import pydoc

import numpy as np
import pytest

from conftest import random_images
from inspection.errors import ParameterError
from inspection.methods.padim import PaDiM
from inspection.methods.patchcore import PatchCore
from inspection.model.backbone_model import BackboneModel
from inspection.model.base import AnomalyModel
from inspection.model.batching import split_holdout
from inspection.params import clone, setting
from inspection.registry import create_model, get_method, load_model, methods


def test_holdout_split_is_seeded_and_sized():
    fit, held = split_holdout(209, 0.1, 10, seed=0)
    assert len(held) == 21 and len(fit) == 188 and not set(fit) & set(held)
    assert np.array_equal(split_holdout(209, 0.1, 10, seed=0)[1], held)
    assert len(split_holdout(30, 0.1, 10, seed=0)[1]) == 10
    assert len(split_holdout(12, 0.1, 10, seed=0)[1]) == 4  # never more than a third
    assert len(split_holdout(50, 0.0, 10, seed=0)[1]) == 0


def test_registry_lists_the_methods_with_declared_parameters():
    assert {"patchcore", "padim", "dfr", "vae", "anogan", "patch_svdd"} <= set(methods())
    for method_cls in methods().values():
        names = method_cls.param_set().names()
        assert {"seed", "image_fpr", "pixel_fpr", "resize_mode"} <= set(names)
        # Methods on pretrained features declare a backbone; those that learn from scratch have none.
        assert ("backbone" in names) == issubclass(method_cls, BackboneModel)
        assert all(param.help for param in method_cls.param_set())


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="unknown parameter"):
        create_model("patchcore", coreset_size=3)
    with pytest.raises(ValueError, match="coreset_ratio"):
        create_model("patchcore", coreset_ratio=2.0)
    with pytest.raises(ValueError, match="image_fpr"):
        create_model("padim", image_fpr=0.0)
    with pytest.raises(ValueError, match="one of"):
        create_model("padim", backbone="alexnet")
    with pytest.raises(ValueError, match="unknown method"):
        get_method("autoencoder9000")
    assert create_model("patchcore", coreset_ratio="0.05").coreset_ratio == 0.05


def test_declarations_check_odd_values_choices_and_rules_without_building_a_model():
    patchcore = get_method("patchcore")
    with pytest.raises(ValueError, match="'neighbourhood' must be odd"):
        patchcore.param_set().resolve({"neighbourhood": 4})
    assert patchcore.param_set().get("device").choices == ("auto", "cpu", "cuda")
    with pytest.raises(ValueError, match="'resize' .* must be at least 'crop'"):
        patchcore.param_set().resolve({"resize_mode": "center_crop", "resize": 100, "crop": 224})
    with pytest.raises(ValueError, match="no layer"):
        patchcore.param_set().resolve({"layers": "blocks.9"})
    assert create_model("padim", backbone="resnet18").layer_names == ("layer1", "layer2", "layer3")
    assert create_model("patchcore", backbone="mobilenet_v2").layer_names == ("features.6", "features.13")
    assert create_model("patchcore", layers="blocks.3,32").layer_names == ("blocks.3", "blocks.6")


def test_estimator_contract():
    model = create_model("padim", n_features=50)
    assert model.get_params()["n_features"] == 50 and repr(model) == "PaDiM(n_features=50)"
    assert not model.fitted and model.channel_index is None  # nothing learned or chosen before fit
    assert model.set_params(sigma=2, epsilon="0.1") is model and (model.sigma, model.epsilon) == (2.0, 0.1)
    copy = clone(model)
    assert type(copy) is PaDiM and copy is not model and copy.get_params() == model.get_params()
    with pytest.raises(ParameterError, match="'n_features' must be >= 1"):
        model.set_params(n_features=0)
    assert model.n_features == 50  # a refused change changes nothing
    with pytest.raises(ParameterError, match="unknown parameter"):
        model.set_params(n_feature=3)


@pytest.mark.parametrize("method", sorted(methods()))
def test_every_method_names_its_parameters_in_its_constructor(method):
    """scikit-learn's contract: every parameter is a named, typed, keyword-only argument with its default (so help(),
    an IDE and a type checker see them), and the constructor takes nothing else."""
    method_cls = get_method(method)
    signature = inspect.signature(method_cls)
    declared = method_cls.param_set()
    assert list(signature.parameters) == declared.names()
    for param in declared:
        argument = signature.parameters[param.name]
        assert argument.kind is inspect.Parameter.KEYWORD_ONLY
        assert argument.default == param.default and argument.annotation is param.kind
    assert all(argument.kind is not inspect.Parameter.VAR_KEYWORD for argument in signature.parameters.values())
    with pytest.raises(TypeError, match="unexpected keyword"):
        method_cls(no_such_setting=1)
    assert method_cls.__init__.__doc__ and f"{method_cls.__name__}(" in pydoc.render_doc(method_cls)
    # The values are attributes, read by their names, and the class attribute holds the declared default.
    model = method_cls()
    assert {name: getattr(model, name) for name in declared.names()} == declared.defaults() == model.get_params()


def test_help_of_patchcore_shows_its_own_defaults():
    text = pydoc.render_doc(PatchCore)
    assert "sigma: float = 4.0" in text and "resize_mode: str = 'aspect'" in text
    assert "coreset_ratio: float = 0.01" in text and "epochs" not in text


def test_a_parameter_must_be_annotated_with_a_simple_type():
    with pytest.raises(TypeError, match="annotated int, float, str or bool"):
        class Odd(PaDiM):  # noqa: F841 - defining it is the test
            name = "odd"
            ratios: list = setting([1, 2], "Not a simple value.")


def test_anomaly_model_is_abstract():
    with pytest.raises(TypeError):
        AnomalyModel()


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        create_model("padim").predict(random_images(1))


# Settings that make a method's fit take seconds here; a method that needs none is covered with no edit.
QUICK = {"padim": {"n_features": 20}, "patchcore": {"coreset_ratio": 0.05},
         "dfr": {"epochs": 2, "batch_positions": 1024},
         "vae": {"epochs": 2, "hidden_dim": 32, "latent_dim": 8, "width": 8, "projection_steps": 3},
         "anogan": {"epochs": 2, "width": 8, "latent_dim": 16, "z_steps": 3},
         "patch_svdd": {"epochs": 1, "pairs_per_image": 16}}


@pytest.mark.parametrize("method", sorted(methods()))
def test_every_registered_method_keeps_the_contract(method, demo_dataset, tmp_path):
    """Fit on good images → maps at the working resolution and scores; one file; identical after loading."""
    settings = {"resize": 64, "crop": 64, **QUICK.get(method, {})}
    model = create_model(method, **settings)
    assert not model.fitted
    model.fit([sample.path for sample in demo_dataset.train[:24]])
    assert model.fitted and model.calibration is not None
    images = [sample.path for sample in demo_dataset.test[::10]]
    prediction = model.predict(images)
    assert prediction.raw_maps.shape == (len(images), 64, 64) and np.isfinite(prediction.raw_scores).all()
    loaded = load_model(model.save(tmp_path / f"{method}.safetensors"))
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    again = loaded.predict(images)
    assert np.array_equal(again.raw_scores, prediction.raw_scores)
    assert (prediction.reconstructions is not None) == model.capabilities.reconstructs
