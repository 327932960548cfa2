"""fixtures.resolve_model: the one place that turns the demo's --backbone and the report's --generator into a
model folder."""

import pytest

from openrlhf_fair.demo import cli as demo
from openrlhf_fair import fixtures
from openrlhf_fair.report import ReportError
from openrlhf_fair.report.sampling import generator_path


def test_a_folder_with_config_json_is_taken_as_it_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert fixtures.resolve_model(str(tmp_path), tmp_path / "scratch") == tmp_path


def test_tiny_is_built_in_the_scratch_folder(tmp_path):
    path = fixtures.resolve_model("tiny", tmp_path)
    assert path == tmp_path / "tiny_llama" and (path / "config.json").is_file()


def test_unknown_names_name_the_option_and_what_it_accepts(tmp_path):
    with pytest.raises(demo.DemoError, match=r"--backbone nope: not 'minilm', 'smollm2', 'tiny' or a model folder"):
        demo._backbone("nope", tmp_path)
    with pytest.raises(ReportError, match=r"--generator minilm: not 'smollm2', 'tiny' or a model folder"):
        generator_path("minilm", tmp_path)  # a reward backbone is no generator
