"""Entry-point discovery and RecBole's own lookups finding plugin models."""

import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from recbole.config import Config
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import ModelType, get_model, get_trainer

from recbole_ext import registry
from recbole_ext.trainer.base import PluginTrainerMixin


def test_entry_points_list_plugin_models():
    """Every model the package declares is registered, and RecBole's lookup returns the entry point's own class."""
    points = {ep.name: ep for ep in entry_points(group="recbole.models") if ep.value.startswith("recbole_ext.")}
    assert {"ComiRec", "TiMiRec", "Re4", "MFN", "IFM", "INN", "DeepIFM", "MARIF"} <= set(points)
    for name, ep in points.items():
        assert get_model(name) is ep.load() and registry.MODELS[name] is ep.load(), name


def test_recbole_lookups_find_plugin_model_and_trainer():
    cls = get_model("ComiRec")
    assert cls.__module__ == "recbole_ext.model.sequential.comirec"
    assert issubclass(get_trainer(ModelType.SEQUENTIAL, "ComiRec"), PluginTrainerMixin)


def test_model_yaml_sits_between_recbole_defaults_and_user_config(tiny):
    config = Config(model="ComiRec", dataset="tiny", config_dict={**tiny, "n_interests": 3})
    assert config["attn_size"] == 8  # from properties/model/ComiRec.yaml
    assert config["n_interests"] == 3  # user dict wins over the YAML's 4
    assert config["eval_args"]["order"] == "TO"  # RecBole's sequential defaults still there


def test_protocol_preset_loads_and_unknown_protocol_is_named(tiny):
    config = Config(model="ComiRec", dataset="tiny", config_dict={**tiny, "protocol": "rechorus"})
    assert config["eval_protocol"] == "fixed_negatives" and config["stopping_step"] == 19
    assert config["topk"] == [5, 10]  # user config still wins over the preset
    with pytest.raises(ValueError, match="protocol: unknown value 'nope'"):
        Config(model="ComiRec", dataset="tiny", config_dict={**tiny, "protocol": "nope"})


def test_name_clash_with_builtin_is_refused():
    clash = type("SASRec", (SequentialRecommender,), {"__module__": __name__})
    with pytest.raises(registry.RegistryError, match="collides with RecBole's built-in"):
        registry.register_model(clash)


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match=r"unknown model 'NoSuchModel'.*ComiRec.*SASRec"):
        registry.check_model("NoSuchModel")


def test_external_distribution_is_discovered(tmp_path, tiny, monkeypatch):
    """A model of another installed distribution (its own dist-info + entry_points.txt) is found by name."""
    pkg = tmp_path / "site" / "toyplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from recbole.model.abstract_recommender import SequentialRecommender

        class ToyPlug(SequentialRecommender):
            def __init__(self, config, dataset):
                super().__init__(config, dataset)
                self.marker = config["toy_marker"]
                self.emb = torch.nn.Embedding(self.n_items, 4)

            def calculate_loss(self, interaction):
                seq = self.emb(interaction[self.ITEM_SEQ]).mean(1)
                logits = seq @ self.emb.weight.T
                return torch.nn.functional.cross_entropy(logits, interaction[self.POS_ITEM_ID])

            def predict(self, interaction):  # RecBole's run_recbole counts FLOPs through it
                seq = self.emb(interaction[self.ITEM_SEQ]).mean(1)
                return (seq * self.emb(interaction[self.ITEM_ID])).sum(-1)

            def full_sort_predict(self, interaction):
                return self.emb(interaction[self.ITEM_SEQ]).mean(1) @ self.emb.weight.T
    '''))
    (pkg / "ToyPlug.yaml").write_text("toy_marker: 7\nloss_type: CE\ntrain_neg_sample_args: ~\n")
    dist = tmp_path / "site" / "toyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[recbole.models]\nToyPlug = toyplug:ToyPlug\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry.register_all()
    try:
        from recbole.quick_start import run_recbole

        result = run_recbole(model="ToyPlug", dataset="tiny", config_dict=tiny)
        assert get_model("ToyPlug").__module__ == "toyplug"
        assert Config(model="ToyPlug", dataset="tiny", config_dict=tiny)["toy_marker"] == 7
        assert set(result["test_result"]) == {"hit@5", "hit@10", "ndcg@5", "ndcg@10"}
        checkpoint = [p for p in Path(tiny["checkpoint_dir"]).glob("ToyPlug-*.pth") if not p.name.endswith("-resume.pth")]
        assert len(checkpoint) == 1, checkpoint
        saved = torch.load(checkpoint[0], weights_only=False)
        assert saved["config"]["model"] == "ToyPlug" and saved["config"]["toy_marker"] == 7  # its YAML reached the run
        assert list(saved["state_dict"]) == ["emb.weight"] and saved["state_dict"]["emb.weight"].shape == (41, 4)
    finally:  # leave the process registry as other tests expect it
        registry.MODELS.pop("ToyPlug", None)
        sys.modules.pop("recbole.model.sequential_recommender.toyplug", None)
