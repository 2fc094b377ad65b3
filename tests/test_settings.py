"""Each setting is declared once (procedure/settings.py); everything else agrees with it."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib

from ska_oso_oet.procedure import settings
from ska_oso_oet.procedure.application import ScriptExecutionService
from ska_oso_oet.procedure.gitmanager import GitSettings
from ska_oso_oet.tango.device import ObservationExecutionTool

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_table_is_the_settings_table():
    text = README.read_text()
    start = text.index("<!-- settings table")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of settings table -->")
    assert text[start:end].strip() == settings.markdown_table()


def test_the_device_declares_every_setting_with_its_default():
    for spec in settings.SETTINGS:
        prop = vars(ObservationExecutionTool)[spec.tango_name]
        assert prop.doc == spec.doc
        assert prop.default_value == spec.default, spec.tango_name


def test_the_service_keywords_default_to_the_settings():
    params = inspect.signature(ScriptExecutionService.__init__).parameters
    for spec in settings.SETTINGS:
        assert spec.name in params, spec.name
        default = params[spec.name].default
        if spec.name == "script_roots":
            assert default is None  # the Python service accepts any file unless told
        elif spec.name == "abort_script":
            assert default is None  # a script object, not a URI
        elif spec.name == "git_cache_dir":
            assert default is None  # then $OET_CACHE_DIR or ~/.cache/ska-oso-oet
        elif spec.name == "data_dir":
            assert default is None  # the Python service: a temporary directory of its own
        elif isinstance(spec.default, list):
            assert list(default) == spec.default
        else:
            assert default == spec.default, spec.name


def test_git_settings_default_to_the_settings():
    fields = {f.name: f.default for f in dataclasses.fields(GitSettings)}
    assert fields["git_timeout"] == settings.default("git_timeout")
    assert fields["install_timeout"] == settings.default("install_timeout")
    assert fields["max_environments"] == settings.default("max_environments")
    assert fields["installer"] == settings.INSTALLER in settings.INSTALLERS


def test_the_cache_directory_falls_back_to_the_environment_then_home(monkeypatch, tmp_path):
    assert settings.cache_dir(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv("OET_CACHE_DIR", str(tmp_path / "env"))
    assert settings.cache_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv("OET_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert settings.cache_dir("") == str(tmp_path / "home" / ".cache" / "ska-oso-oet")
