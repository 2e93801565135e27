"""The example plugin against sah's plugin contract (`sah.testing`): run `pytest tests` here."""

from sah_plugin_example import ExampleTones

from sah.testing import check_generator


def test_example_tones_keeps_the_contract():
    report = check_generator(ExampleTones(), bad_options={"duration": -1.0})
    assert "decode" in report.passed
