"""Config loading: recipe lookup, overrides, aliases, unknown keys, schedules, parsed.yaml."""
from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from threestudio_like import find, register
from threestudio_like.config import (
    ConfigError,
    dump_parsed,
    find_config_file,
    load_config,
    schedule_value,
    slugify,
)


def test_bare_name_and_path_resolve_to_the_same_recipe():
    by_name = find_config_file("demo.yaml")
    by_stem = find_config_file("demo")
    assert by_name.name == "demo.yaml" and by_stem == by_name
    assert find_config_file(str(by_name)) == by_name


def test_missing_recipe_suggests_a_close_name():
    with pytest.raises(ConfigError, match="Did you mean 'demo.yaml'"):
        find_config_file("demoo.yaml")


def test_overrides_merge_into_structured_config(tmp_path):
    cfg = load_config("demo.yaml", ["system.guidance.resolution=32", "trainer.max_steps=7",
                                    f"exp_root_dir={tmp_path}"])
    assert cfg.system.guidance.resolution == 32
    assert cfg.trainer.max_steps == 7
    # interpolation follows the override
    cfg = load_config("demo.yaml", ["system.geometry.radius=1.5", f"exp_root_dir={tmp_path}"])
    assert cfg.system.renderer.radius == 1.5
    assert cfg.trial_dir.startswith(os.path.join(str(tmp_path), "demo", "reference-object@"))


@pytest.mark.parametrize(
    "override, bad, suggestion",
    [
        ("sytem.guidance.resolution=3", "sytem", "system"),
        ("trainer.max_stepz=3", "trainer.max_stepz", "trainer.max_steps"),
        ("system.geometry.density_blob_scal=3", "system.geometry.density_blob_scal",
         "system.geometry.density_blob_scale"),
        ("system.guidance.resolutin=3", "system.guidance.resolutin", "system.guidance.resolution"),
        ("data.elevation_rang=[0,1]", "data.elevation_rang", "data.elevation_range"),
        ("checkpoint.every_n_train_step=3", "checkpoint.every_n_train_step",
         "checkpoint.every_n_train_steps"),
    ],
)
def test_unknown_key_names_key_and_closest_match(override, bad, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config("demo.yaml", [override])
    message = str(info.value)
    assert f"'{bad}'" in message
    assert f"Did you mean '{suggestion}'" in message


def test_unknown_part_name_is_reported():
    with pytest.raises(ConfigError, match="hashgrid-implicit-volume"):
        load_config("demo.yaml", ["system.geometry_type=hashgrid-implict-volume"])


def test_aliases_expand_or_explain():
    recipe = OmegaConf.create({"system": {"prompt_processor": {"prompt": "???"}}, "data": {}})
    from threestudio_like.config import _expand_aliases

    assert _expand_aliases(["prompt=a corgi"], recipe) == ["system.prompt_processor.prompt=a corgi"]
    assert _expand_aliases(["image=x.png"], recipe) == ["data.image_path=x.png"]
    # the demo takes no prompt: the alias explains instead of silently adding a key
    with pytest.raises(ConfigError, match="does not take a prompt"):
        load_config("demo.yaml", ["prompt=a corgi"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo.yaml", ["trainer.max_steps"])


def test_schedule_values():
    assert schedule_value(0.5, 0, 100) == 0.5
    sched = [100, 1.0, 0.0, 200]
    assert schedule_value(sched, 0, 0) == 1.0
    assert schedule_value(sched, 0, 100) == 1.0
    assert schedule_value(sched, 0, 150) == pytest.approx(0.5)
    assert schedule_value(sched, 0, 200) == 0.0
    assert schedule_value(sched, 0, 10_000) == 0.0
    assert schedule_value([1.0, 3.0, 10], 0, 5) == pytest.approx(2.0)  # 3-list: start at 0
    # float end step counts epochs
    assert schedule_value([0, 0.0, 1.0, 2.0], 1, 999) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        schedule_value([1, 2], 0, 0)


def test_slug_is_a_safe_bounded_tag():
    slug = slugify('a DSLR photo of a corgi / wearing "hat"' + "x" * 200)
    assert "/" not in slug and " " not in slug and '"' not in slug
    assert len(slug) <= 64
    assert slugify("../../etc") == "etc"


def test_parsed_yaml_reproduces_the_config(tmp_path):
    cfg = load_config("demo.yaml", ["system.guidance.resolution=32", f"exp_root_dir={tmp_path}"])
    path = tmp_path / "parsed.yaml"
    dump_parsed(cfg, path)
    again = load_config(str(path), [])
    for key in ("system", "data", "trainer", "checkpoint"):
        assert OmegaConf.to_container(again[key]) == OmegaConf.to_container(cfg[key])
    for key in ("seed", "name", "tag"):
        assert again[key] == cfg[key]
    assert again.trial_dir != ""


def test_resume_reuses_the_checkpoint_trial(tmp_path):
    trial = tmp_path / "demo" / "t@1"
    (trial / "ckpts").mkdir(parents=True)
    (trial / "configs").mkdir()
    (trial / "configs" / "parsed.yaml").write_text("name: demo\n")
    (trial / "ckpts" / "last.ckpt").write_bytes(b"x")
    cfg = load_config("demo.yaml", [f"resume={trial / 'ckpts' / 'last.ckpt'}"])
    assert os.path.samefile(cfg.trial_dir, trial)
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_config("demo.yaml", [f"resume={tmp_path / 'nope.ckpt'}"])


def test_resume_into_a_trial_starts_from_its_parsed_yaml_unless_the_config_owns_the_trial(tmp_path):
    """A recipe name + resume= reads the trial's own parsed.yaml; a config that names the trial as
    its trial_dir (a batch job's config, with the job's current settings) is used as given."""
    from omegaconf import OmegaConf

    trial = tmp_path / "t"
    (trial / "ckpts").mkdir(parents=True)
    (trial / "configs").mkdir()
    (trial / "ckpts" / "last.ckpt").write_bytes(b"x")
    base = load_config("demo.yaml", [f"exp_root_dir={tmp_path}"], make_trial_dir=False)
    OmegaConf.save(OmegaConf.merge(base, {"system": {"geometry": {"isosurface_threshold": 7.0}}}),
                   trial / "configs" / "parsed.yaml")
    resume = f"resume={trial / 'ckpts' / 'last.ckpt'}"
    assert load_config("demo.yaml", [resume]).system.geometry.isosurface_threshold == 7.0
    owner = tmp_path / "job.yaml"
    OmegaConf.save(OmegaConf.merge(base, {"trial_dir": str(trial),
                                          "system": {"geometry": {"isosurface_threshold": 3.0}}}), owner)
    assert load_config(str(owner), [resume]).system.geometry.isosurface_threshold == 3.0


def test_registry_rejects_duplicates_and_suggests():
    @register("unit-test-thing")
    class Thing:
        pass

    assert find("unit-test-thing") is Thing
    with pytest.raises(ValueError):
        register("unit-test-thing")(type("Other", (), {}))
    with pytest.raises(KeyError, match="unit-test-thing"):
        find("unit-test-thingy")


def test_prompts_with_dollar_braces_stay_literal(tmp_path):
    prompt = "a neon sign that reads ${price} and $5"
    cfg = load_config("mvdream-sd21.yaml", [f"prompt={prompt}", f"exp_root_dir={tmp_path}"])
    assert cfg.system.prompt_processor.prompt == prompt
    assert cfg.tag == prompt  # the recipe's tag interpolates the prompt: literal, not re-resolved
    path = tmp_path / "parsed.yaml"
    dump_parsed(cfg, path)
    assert load_config(str(path)).system.prompt_processor.prompt == prompt
