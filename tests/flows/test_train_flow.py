"""The train-feature-extractor flow writes a checkpoint that detect can use."""

from microchange.config import DeepConfig, DetectConfig
from microchange.features import checkpoints
from microchange.pipeline import run_detection


def test_train_flow_writes_the_checkpoint_detect_uses(prefect_harness, planted_pair, tmp_path,
                                                      monkeypatch) -> None:
    """Detecting with the flow's checkpoint trains nothing, gives the scores of the same
    training done on the fly, and not those of the untrained network."""
    from microchange.features.learned import extractor
    from microchange.flows.train import train_feature_extractor

    before, after, _ = planted_pair
    out = tmp_path / "flow.ckpt"
    config = DetectConfig(method="learned", seed=3, deep=DeepConfig(epochs=1, device="cpu"))
    summary = train_feature_extractor(before=str(before), after=str(after), out=str(out),
                                      config=config)
    assert summary["checkpoint"] == str(out) and out.is_file()
    assert (tmp_path / "flow.loss.png").is_file()
    assert checkpoints.load(out).metadata["objective"] == summary["objective"] == "cross"

    def score(name: str, cfg: DetectConfig) -> bytes:
        run_detection(before, after, tmp_path / name, cfg)
        return (tmp_path / name / "change_score.tif").read_bytes()

    on_the_fly = score("fly", config)

    def no_training(*args, **kwargs):
        raise AssertionError("detection with a checkpoint trained a network")

    monkeypatch.setattr(extractor, "train_network", no_training)
    with_model = config.model_copy(update={"deep": config.deep.model_copy(
        update={"model": str(out)})})
    assert score("ckpt", with_model) == on_the_fly
    monkeypatch.setattr(extractor, "train_network",
                        lambda *args, **kwargs: {"epochs_run": 0, "loss_history": []})
    assert score("untrained", config) != on_the_fly


def test_train_flow_parameters_are_documented_for_the_ui() -> None:
    from microchange.flows.train import train_feature_extractor

    assert train_feature_extractor.name == "train-feature-extractor"
    props = train_feature_extractor.parameters.properties
    assert set(props) == {"before", "after", "out", "config", "more_pairs"}
    assert all(props[k].get("description") for k in props)
    assert props["config"].get("default") is None
    assert "'learned'" in props["config"]["description"]
