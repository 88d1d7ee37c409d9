"""StreamSettings: checked when made, unknown names refused, and the object a Stream runs with."""

import pytest

from deepis_rt.errors import ConfigError
from deepis_rt.stream import Stream, StreamSettings


def test_unknown_names_refused_naming_them():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['setle_s'\]; the settings are .*settle_s"):
        StreamSettings.from_dict({"setle_s": 0.5})
    with pytest.raises(ConfigError, match=r"\['max_batches'\]"):
        StreamSettings().replace(max_batches=2)


def test_replace_checks_the_new_values():
    settings = StreamSettings(settle_s=0.5)
    assert settings.replace(max_frames=3) == StreamSettings(settle_s=0.5, max_frames=3)
    with pytest.raises(ConfigError, match="max_frames must be >= 1"):
        settings.replace(max_frames=0)


def test_stream_runs_with_the_settings_object_it_is_given(tmp_path):
    settings = StreamSettings(once=True, settle_s=0.0, write_masks=False)
    stream = Stream(tmp_path, None, segmenter=None, settings=settings)
    assert stream.settings is settings
    changed = Stream(tmp_path, None, segmenter=None, settings=settings, max_frames=2)
    assert changed.settings == settings.replace(max_frames=2) and settings.max_frames is None
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['onse'\]"):
        Stream(tmp_path, None, segmenter=None, onse=True)
