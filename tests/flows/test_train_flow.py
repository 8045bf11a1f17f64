"""The train-feature-extractor flow writes a checkpoint that detect can use."""

from microchange.config import DeepConfig, DetectConfig
from microchange.features import checkpoints


def test_train_flow_writes_a_usable_checkpoint(prefect_harness, planted_pair, tmp_path) -> None:
    from microchange.flows.train import train_feature_extractor

    before, after, _ = planted_pair
    out = tmp_path / "flow.ckpt"
    config = DetectConfig(method="learned", deep=DeepConfig(epochs=1, device="cpu"))
    summary = train_feature_extractor(before=str(before), after=str(after), out=str(out),
                                      config=config)
    assert summary["checkpoint"] == str(out) and out.is_file()
    assert (tmp_path / "flow.loss.png").is_file()
    assert checkpoints.load(out).metadata["objective"] == summary["objective"] == "cross"


def test_train_flow_parameters_are_documented_for_the_ui() -> None:
    from microchange.flows.train import train_feature_extractor

    assert train_feature_extractor.name == "train-feature-extractor"
    props = train_feature_extractor.parameters.properties
    assert set(props) == {"before", "after", "out", "config", "more_pairs"}
    assert all(props[k].get("description") for k in props)
    assert props["config"].get("default") is None
    assert "'learned'" in props["config"]["description"]
