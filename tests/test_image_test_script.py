"""The image test's own choices, checked without Docker: what it asks the pipelines to run."""

from __future__ import annotations

import pytest
import yaml
from script_loading import REPO, load_script


def image_test_module():
    return load_script("scripts/run_image_test.py", "run_image_test")


@pytest.mark.parametrize("name", ["regular_moe", "pretrained_moe"])
def test_image_test_runs_the_demo_settings_with_fewer_speakers(name):
    from whisper_moe.config import check_params, deep_merge, defaults

    script = image_test_module()
    compiled = next(yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text()))
    default = yaml.safe_load(compiled["root"]["inputDefinitions"]["parameters"]["params_yaml"]["defaultValue"])
    asked = yaml.safe_load(script.image_test_params_yaml(name))
    for key, value in script.IMAGE_TEST_DEMO_CORPUS.items():
        assert asked["data"]["demo"].pop(key) == value
        default["data"]["demo"].pop(key, None)
    assert asked == default  # every other demo setting as compiled
    check_params(deep_merge(defaults(), yaml.safe_load(script.image_test_params_yaml(name))))
