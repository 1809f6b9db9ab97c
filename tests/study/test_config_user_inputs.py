"""Study YAMLs a user gets wrong: refused when the config is read, before any pretraining or fine-tuning run."""

import pytest

from vitlab.study.config import study_config_from_dict

BACKBONES = {"vit": {"pretrain": "x"}}


@pytest.mark.parametrize(("section", "message"), [
    # each was refused only after the pretraining stage, naming the peft-study flags --methods / --seeds
    ({"extra_runs": [{"backbone": "vit", "method": "nope"}]}, r"extra_runs\[0\].method 'nope' is not a peft method"),
    ({"extra_runs": [{"backbone": "vit", "method": "full", "seed": -1}]}, r"extra_runs\[0\].seed must be an integer"),
    ({"finetune": {"seeds": [0, 0, 1]}}, r"finetune.seeds lists a seed twice \(\[0, 0, 1\]\)"),
    # refused inside each run's process, after the pretraining and the other runs
    ({"finetune": {"negatives": {"none": None, "spin": {"kinds": ["spin"]}}}}, r"finetune.negatives.spin: .*kinds"),
    ({"finetune": {"negatives": {"x": {"kinds": ["rotate"], "loss": "l3"}}}}, r"finetune.negatives.x: .*loss"),
    ({"finetune": {"negatives": {"x": {"weight": -1.0}}}}, r"finetune.negatives.x: .*weight"),
    ({"finetune": {"methods": {"lora": {"r": 4, "bogus": 1}}}}, r"method 'lora' for backbone 'vit'.*'bogus'"),
    ({"finetune": {"methods": {"subspace": {}}}}, r"method 'subspace' for backbone 'vit'.*dim"),
    # refused in the evaluate stage, after pretraining and every fine-tuning run
    ({"evaluation": {"kinds": ["shufle"]}}, r"evaluation.kinds / evaluation.patch_size: .*\['shufle'\]"),
    ({"evaluation": {"patch_size": 0}}, r"evaluation.kinds / evaluation.patch_size: .*patch_size"),
    # an AttributeError with --full ('int' object has no attribute 'items'), ignored without it
    ({"full": 3}, r"full: is a mapping of overrides"),
])
def test_bad_study_sections_are_refused_when_the_config_is_read(section, message):
    with pytest.raises(ValueError, match=message):
        study_config_from_dict({"backbones": BACKBONES, **section})


def test_backbone_method_options_of_an_unknown_method_are_refused_not_dropped():
    raw = {"backbones": {"vit": {"pretrain": "x", "method_options": {"kadaptaton": {"n": 16}}}}}
    with pytest.raises(ValueError, match=r"backbones.vit.method_options names unknown method\(s\) \['kadaptaton'\]"):
        study_config_from_dict(raw)  # was silently ignored: the runs trained with n = 8
    raw = {"backbones": {"vit": {"pretrain": "x", "method_options": {"kadaptation": {"n": 0}}}}}
    with pytest.raises(ValueError, match=r"method 'kadaptation' for backbone 'vit'"):
        study_config_from_dict(raw)  # the backbone's own override is checked too


def test_a_given_weights_backbone_with_img_size_zero_is_refused():
    raw = {"backbones": {"vit": {"model": "vit_tiny_patch16_224", "pretrained": "timm", "img_size": 0}}}
    with pytest.raises(ValueError, match=r"backbones.vit.img_size must be an integer >= 1"):
        study_config_from_dict(raw)


def test_valid_sections_still_load():
    config = study_config_from_dict({
        "backbones": {"vit": {"pretrain": "x"},
                      "iformer": {"pretrain": "y", "method_options": {"kadaptation": {"n": 16}}}},
        "finetune": {"methods": {"full": {}, "lora": {"r": 2}}, "seeds": [2, 0],
                     "negatives": {"none": None, "rot": {"kinds": ["rotate"], "loss": "l2", "patch_size": 8}}},
        "extra_runs": [{"backbone": "iformer", "method": "kadaptation", "negatives": "rot", "shots": 20, "seed": 1}],
        "evaluation": {"kinds": ["rotate"], "patch_size": 4}, "full": {"finetune": {"seeds": [0, 1, 2]}},
    })
    assert config.finetune.seeds == [2, 0] and config.planned_runs()[-1] == ("iformer", "kadaptation", "rot", 20, 1)
    full = study_config_from_dict({"backbones": BACKBONES, "full": {"finetune": {"seeds": [0, 1, 2]}}}, full=True)
    assert full.finetune.seeds == [0, 1, 2]
