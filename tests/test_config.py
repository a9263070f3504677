from __future__ import annotations

import pytest

from facelift.config import ConfigError, parse_set_options, resolve_config


def test_profiles_have_the_papers_settings():
    flux = resolve_config("flux", environ={})
    assert (flux.generation.schnell.steps, flux.generation.schnell.guidance) == (4, 0.0)
    assert flux.generation.schnell.max_sequence_length == 256
    assert (flux.generation.dev.steps, flux.generation.dev.guidance, flux.generation.dev.strength) == (28, 3.5, 0.6)
    assert (flux.generation.width, flux.generation.height) == (512, 512)
    tiny = resolve_config("tiny", environ={})
    assert tiny.generation.schnell.model.startswith("tiny://") and tiny.generation.device == "cpu"


def test_precedence_file_then_env_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[plan]\ncount = 5\nseed = 3\n[generation]\nbatch_size = 2\n")
    env = {"FACELIFT_PLAN__SEED": "7", "FACELIFT_GENERATION__BATCH_SIZE": "3"}
    cfg = resolve_config("tiny", config_file=cfg_file, environ=env, overrides={"generation.batch_size": 6})
    assert cfg.plan.count == 5  # file
    assert cfg.plan.seed == 7  # env beats file
    assert cfg.generation.batch_size == 6  # explicit override beats env


def test_unknown_profile_and_bad_values_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*flux, sim, tiny"):
        resolve_config("nope", environ={})
    with pytest.raises(ConfigError, match="generation.height.*multiple of 16"):
        resolve_config("tiny", environ={}, overrides={"generation.height": 50})
    with pytest.raises(ConfigError, match="plan.typo"):
        resolve_config("tiny", environ={}, overrides={"plan.typo": 1})
    with pytest.raises(ConfigError, match="must contain"):
        resolve_config("tiny", environ={}, overrides={"plan.prompt.template": "no placeholder"})
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config("tiny", environ={}, config_file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(["novalue"])


def test_fingerprint_tracks_content_not_speed_settings():
    base = resolve_config("tiny", environ={})
    faster = resolve_config("tiny", environ={}, overrides={"generation.batch_size": 8, "ray.num_workers": 3,
                                                           "storage.root": "s3://b/p"})
    other = resolve_config("tiny", environ={}, overrides={"generation.dev.strength": 0.5})
    assert base.fingerprint() == faster.fingerprint()
    assert base.fingerprint() != other.fingerprint()


def test_saved_config_holds_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    dumped = str(resolve_config("flux").public_dict())
    assert "super-secret-value" not in dumped and "hf_secret_token" not in dumped


def test_other_facelift_variables_in_the_environment_leave_the_build_config_alone(tmp_path):
    """``$FACELIFT_LPIPS_BACKBONE`` (the U-Net's LPIPS backbone file, documented for users) once made every
    ``facelift build`` fail with "lpips_backbone: Extra inputs are not permitted"; a misspelt build key still fails."""
    from facelift.config import OTHER_SETTINGS, ConfigError, resolve_config
    from facelift.models.losses import LPIPS_BACKBONE_ENV

    assert LPIPS_BACKBONE_ENV in OTHER_SETTINGS
    cfg = resolve_config("tiny", environ={LPIPS_BACKBONE_ENV: str(tmp_path / "alex.pth"), "FACELIFT_PLAN__SEED": "7"})
    assert cfg.plan.seed == 7
    with pytest.raises(ConfigError, match="sed"):
        resolve_config("tiny", environ={"FACELIFT_PLAN__SED": "7"})
