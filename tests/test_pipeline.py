"""The run end to end on a tiny CNN: outputs, cache hits/misses/invalidation, skipped files, overwrite rules."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import write_config
from safetensors.numpy import load_file

from reportgen.cache import TensorCache
from reportgen.cli import main
from reportgen.config import load_config
from reportgen.errors import ModelError, UsageError
from reportgen.hooks import model_state
from reportgen.runner import prepare, run

N_IMAGES = 4
# per image: predictions + 1 feature-map layer + 5 methods x 2 layers; plus 2 kernel layers once
ENTRIES = N_IMAGES * (1 + 1 + 10) + 2


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _img_srcs(html_path):
    parser = _Imgs()
    parser.feed(html_path.read_text(encoding="utf-8"))
    return parser.srcs


def test_first_run_computes_everything_and_writes_every_output(tmp_path, image_dir):
    cfg = load_config(write_config(tmp_path, image_dir))
    result = run(cfg)
    s = result.stats
    assert (s.images_ok, s.images_skipped) == (N_IMAGES, 0)
    assert (s.cache_hits, s.cache_misses, s.cache_writes) == (0, ENTRIES, ENTRIES)
    assert s.batches == 2 and s.forward_passes == 2 and s.backward_passes == 2  # one of each per batch
    out = cfg.run.output
    srcs = _img_srcs(out / "report.html") + [f"images/{src}" for page in sorted((out / "images").glob("*.html"))
                                              for src in _img_srcs(page)]
    assert all((out / s).is_file() for s in srcs)
    manifest = json.loads((out / "manifest.json").read_text())
    class_maps = {c["image"] for cm in manifest["audit"]["class_maps"] for c in cm["classes"]}
    assert {s for s in srcs if s.startswith("assets/audit/")} == class_maps and class_maps
    # 2 kernel galleries; per image: thumbnail (index table + its page), 1 feature panel, 10 CAM panels
    assert len(srcs) - len(class_maps) == 2 + N_IMAGES * (2 + 1 + 10)
    assert manifest["run"]["images_ok"] == N_IMAGES
    first = manifest["images"][0]
    maps = load_file(str(out / first["maps_file"]))
    assert maps["cam/gradcam/features.5"].shape == (1, 16, 16)  # (targets, h, w) at the layer's resolution
    assert maps["cam/gradcam/features.2"].shape == (1, 16, 16)
    assert maps["feature_maps/features.4"].shape == (4, 16, 16)
    assert maps["logits"].shape == (10,)
    assert int(maps["cam/gradcam/features.5/targets"][0]) == first["predictions"][0]["class_index"]
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no staging folder left behind


def test_second_run_does_no_model_work(tmp_path, image_dir):
    cfg = load_config(write_config(tmp_path, image_dir))
    first = run(cfg)
    second = run(cfg, force=True)
    s = second.stats
    assert (s.forward_passes, s.backward_passes) == (0, 0)
    assert (s.cache_hits, s.cache_misses, s.cache_writes) == (ENTRIES, 0, 0)
    a = json.loads(first.manifest.read_text())["images"]
    b = json.loads(second.manifest.read_text())["images"]
    assert [i["predictions"] for i in a] == [i["predictions"] for i in b]


def test_changing_a_parameter_recomputes_only_what_changed(tmp_path, image_dir):
    path = write_config(tmp_path, image_dir)
    run(load_config(path))
    path = write_config(tmp_path, image_dir, feature_maps={"layers": ["features.4"], "top_k": 5})
    s = run(load_config(path), force=True).stats
    assert s.cache_writes == N_IMAGES  # only the feature-map entries
    assert s.backward_passes == 0  # no CAM was recomputed
    assert s.cache_hits == ENTRIES - N_IMAGES


def test_changing_the_weights_recomputes_everything(tmp_path, image_dir):
    from tinynets import tiny_cnn

    run(load_config(write_config(tmp_path, image_dir)))
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.bias.add_(0.5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    cfg = load_config(write_config(tmp_path, image_dir, model={
        "source": "factory", "name": "tinynets:tiny_cnn", "labels": "none", "weights": str(tmp_path / "w.pt"),
        "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    s = run(cfg, force=True).stats
    assert s.cache_hits == 0 and s.cache_writes == ENTRIES


def test_corrupt_cache_entry_is_recomputed(tmp_path, image_dir):
    cfg = load_config(write_config(tmp_path, image_dir))
    run(cfg)
    entry = next(cfg.run.cache_dir.glob("??/*.safetensors"))
    entry.write_bytes(b"garbage")
    shutil.rmtree(cfg.run.cache_dir / "figures")  # else the figures drawn from it are copied and it is not read
    s = run(cfg, force=True).stats
    assert s.cache_misses == 1 and s.cache_writes == 1


def test_warm_rerun_copies_the_drawn_figures_and_redraws_when_the_drawing_changes(tmp_path, image_dir):
    cfg = load_config(write_config(tmp_path, image_dir))
    first = run(cfg)
    files = {p.relative_to(cfg.run.output): p.read_bytes() for p in cfg.run.output.rglob("*")
             if p.is_file() and p.suffix in (".jpg", ".safetensors")}
    second = run(cfg, force=True)
    assert second.stats.seconds["draw"] == 0  # nothing drawn: every image's figures came from the cache
    assert second.stats.cache_hits == ENTRIES and second.stats.cache_misses == 0
    assert files == {p.relative_to(cfg.run.output): p.read_bytes() for p in cfg.run.output.rglob("*")
                     if p.is_file() and p.suffix in (".jpg", ".safetensors")}
    a, b = (json.loads(r.manifest.read_text())["images"] for r in (first, second))
    assert a == b
    # a kept figure damaged in place (it is a hard link of the report's file): found by its checksum, redrawn
    kept = next((cfg.run.cache_dir / "figures").glob("??/*/assets/images/*/thumb.jpg"))
    with open(kept, "r+b") as fh:
        fh.write(b"garbage")
    again = run(cfg, force=True)
    assert again.stats.seconds["draw"] > 0 and again.stats.forward_passes == 0
    assert files == {p.relative_to(cfg.run.output): p.read_bytes() for p in cfg.run.output.rglob("*")
                     if p.is_file() and p.suffix in (".jpg", ".safetensors")}
    # another colour map: every image is drawn again from the cached results, nothing is computed
    path = write_config(tmp_path, image_dir, report={"pdf": False, "image_size": 96, "colormap": "viridis"})
    third = run(load_config(path), force=True)
    assert third.stats.seconds["draw"] > 0 and third.stats.forward_passes == 0
    changed = [rel for rel, data in files.items() if "cam-" in str(rel) and (cfg.run.output / rel).read_bytes() != data]
    assert changed


def test_skipped_files_are_listed_and_the_run_goes_on(tmp_path, image_dir):
    (image_dir / "broken.png").write_bytes(b"\x89PNG but not really")
    cfg = load_config(write_config(tmp_path, image_dir))
    result = run(cfg)
    assert (result.stats.images_ok, result.stats.images_skipped) == (N_IMAGES, 1)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["skipped"] == [{"path": "broken.png", "reason": manifest["skipped"][0]["reason"]}]
    assert manifest["skipped"][0]["reason"].startswith("cannot decode image")
    assert "broken.png" in result.html.read_text()


def test_finished_run_is_not_overwritten_without_force(tmp_path, image_dir, capsys):
    path = write_config(tmp_path, image_dir)
    assert main(["run", str(path), "--quiet"]) == 0
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run; pass --force to replace it" in err and "Traceback" not in err
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    with pytest.raises(UsageError):
        run(load_config(path))


def test_cli_overrides_data_output_and_cache(tmp_path, image_dir, capsys):
    from conftest import make_images

    other = tmp_path / "other"
    make_images(other, n=2, labelled=False)
    path = write_config(tmp_path, image_dir)
    code = main(["run", str(path), "--quiet", "--data", str(other), "--output", str(tmp_path / "o2"),
                 "--cache-dir", str(tmp_path / "c2"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "images: 2 rendered, 0 skipped" in out and "report: " in out
    assert (tmp_path / "o2" / "report.html").is_file() and TensorCache(tmp_path / "c2").info().entries > 0


def test_model_is_unchanged_after_a_run(tmp_path, image_dir):
    cfg = load_config(write_config(tmp_path, image_dir))
    handle = prepare(cfg)
    lm = handle.loaded()
    lm.module.train()
    before = model_state(lm.module)
    weights = {k: v.clone() for k, v in lm.module.state_dict().items()}
    run(cfg, model=handle)
    assert model_state(lm.module) == before
    assert all(torch.equal(v, lm.module.state_dict()[k]) for k, v in weights.items())


def test_true_label_and_topk_targets(tmp_path, image_dir):
    cfg = load_config(write_config(tmp_path, image_dir, cams={"methods": ["gradcam"], "layers": ["features.5"],
                                                              "target": "topk", "top_k": 3}))
    manifest = json.loads(run(cfg).manifest.read_text())
    image = manifest["images"][0]
    groups = image["cams"]
    top3 = [p["class_index"] for p in image["predictions"][:3]]
    label = int(image["label"].split("_")[0])
    # the top 3 classes; a misclassified image's label class (when among them) is placed right after the top-1
    order = [0, *([top3.index(label)] if label in top3[1:] and not image["correct"] else []),
             *(i for i in (1, 2) if not (label in top3[1:] and not image["correct"] and i == top3.index(label)))]
    assert [g["target_kind"].split(",")[0] for g in groups] == [f"top-{i + 1}" for i in order]
    assert [g["target_index"] for g in groups] == [top3[i] for i in order]
    cfg = load_config(write_config(tmp_path, image_dir, cams={"methods": ["gradcam"], "layers": ["features.5"],
                                                              "target": "true"}))
    manifest = json.loads(run(cfg, force=True).manifest.read_text())
    for image in manifest["images"]:
        (group,) = image["cams"]
        assert group["target_kind"] == "true"
        assert group["target_index"] == int(image["label"].split("_")[0])  # folders are 0_class0, 1_class1


def test_cache_cli(tmp_path, image_dir, capsys):
    path = write_config(tmp_path, image_dir)
    run(load_config(path))
    assert main(["cache", "info", str(path)]) == 0
    assert f"{ENTRIES} entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"removed {ENTRIES} entries" in capsys.readouterr().out
    assert TensorCache(tmp_path / "cache").info().entries == 0


def test_methods_and_layers_cli(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "feature_maps", "kernels"]:
        assert f"\n{name} " in "\n" + out
    assert main(["layers", "factory:tinynets:tiny_cnn", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "features.2  Conv2d" in out and "16x16x16" in out
    assert main(["layers", "nonsense"]) == 2


def test_fully_cached_rerun_neither_builds_the_model_nor_imports_torch(tmp_path, image_dir):
    import subprocess
    import sys

    path = write_config(tmp_path, image_dir, model={
        "source": "timm", "name": "resnet18", "num_classes": 10, "labels": "none", "preprocess": {"size": 32}},
        kernels={"layers": ["conv1"]}, feature_maps={"layers": ["layer1"]},
        cams={"methods": ["gradcam", "layercam"], "layers": ["layer4"]})
    first = run(load_config(path))  # random init is seeded, so the same model comes back next time
    assert first.stats.forward_passes == 2
    handle = prepare(load_config(path))
    assert not handle.built  # the card came from the cache
    code = (
        "import sys\n"
        "from reportgen.config import load_config\n"
        "from reportgen.runner import run\n"
        f"r = run(load_config({str(path)!r}), force=True)\n"
        "print(r.stats.forward_passes, r.stats.cache_misses, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", "False"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["run"]["device"] == "not used (all cached)"


def test_card_that_no_longer_matches_the_weights_is_refreshed(tmp_path, image_dir):
    from reportgen.modelcard import read_card, write_card

    path = write_config(tmp_path, image_dir)
    cfg = load_config(path)
    handle = prepare(cfg)
    handle.remember()
    card = read_card(cfg.run.cache_dir, handle.key)
    assert card == handle.card
    from dataclasses import replace

    write_card(cfg.run.cache_dir, handle.key, replace(card, digest="0" * 64))
    stale = prepare(cfg)
    assert stale.card.digest == "0" * 64 and not stale.built
    with pytest.raises(ModelError, match="the record was refreshed: run again"):
        stale.loaded()
    assert prepare(cfg).card.digest == card.digest


def test_factory_without_declared_identity_is_built_every_run(tmp_path, image_dir):
    from reportgen.config import ModelConfig
    from reportgen.modelcard import recipe_key

    assert recipe_key(ModelConfig(source="factory", name="tinynets:plain_factory")) is None
    assert recipe_key(ModelConfig(source="factory", name="tinynets:tiny_cnn")) is not None
    path = write_config(tmp_path, image_dir, model={
        "source": "factory", "name": "tinynets:plain_factory", "labels": "none", "preprocess": {"size": 32}})
    run(load_config(path))
    handle = prepare(load_config(path))
    assert handle.built
    assert run(load_config(path), force=True, model=handle).stats.forward_passes == 0  # results still cached


def test_out_of_memory_halves_the_batch_and_gives_the_same_results(tmp_path, image_dir, monkeypatch):
    import reportgen.compute as compute

    cfg = load_config(write_config(tmp_path, image_dir, run={
        "output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "device": "cpu", "batch_size": 4}))
    reference = json.loads(run(cfg).manifest.read_text())["images"]
    real = compute.compute_entries

    def small_memory(spec, lm, x, *args, **kwargs):
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("pretend: CUDA out of memory")
        return real(spec, lm, x, *args, **kwargs)

    monkeypatch.setattr(compute, "compute_entries", small_memory)
    cfg2 = load_config(write_config(tmp_path, image_dir, run={
        "output": str(tmp_path / "out2"), "cache_dir": str(tmp_path / "cache2"), "device": "cpu", "batch_size": 4}))
    result = run(cfg2)
    assert result.stats.oom_splits == 3  # 4 → 2 + 2 → 1 + 1 + 1 + 1
    assert result.stats.forward_passes == 4
    got = json.loads(result.manifest.read_text())["images"]
    assert [i["predictions"] for i in got] == [i["predictions"] for i in reference]


def test_channels_last_gives_the_same_maps_under_its_own_keys(tmp_path, image_dir, monkeypatch):
    import numpy as np

    def run_with(channels_last: bool):
        cfg = load_config(write_config(tmp_path, image_dir, run={
            "output": str(tmp_path / f"out-{channels_last}"), "cache_dir": str(tmp_path / "cache"), "device": "cpu",
            "batch_size": 3, "channels_last": channels_last}))
        result = run(cfg)
        images = json.loads(result.manifest.read_text())["images"]
        return result.stats, [load_file(str(cfg.run.output / i["maps_file"])) for i in images]

    import reportgen.models as models

    loaded, inputs = [], []
    real_load = models.load_model

    def spy(*args, **kwargs):  # the model the run really uses, and the memory format of its inputs
        lm = real_load(*args, **kwargs)
        lm.module.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].is_contiguous(
            memory_format=torch.channels_last)))
        loaded.append(lm)
        return lm

    monkeypatch.setattr(models, "load_model", spy)
    s_cl, maps_cl = run_with(True)
    conv = loaded[0].module.features[2].weight
    assert loaded[0].memory_format == torch.channels_last
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert inputs and all(inputs), "channels_last: the inputs reached the model in the contiguous layout"
    inputs.clear()
    s_plain, maps_plain = run_with(False)
    assert loaded[1].module.features[2].weight.is_contiguous() and inputs and not any(inputs)
    # the layout is part of the keys (rounding differs): the second run recomputes all but the kernel galleries
    assert s_plain.cache_hits == 2 and s_plain.forward_passes == s_cl.forward_passes == 2
    for a, b in zip(maps_cl, maps_plain, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5 * float(np.abs(b[name]).max() + 1e-12),
                                       err_msg=name)


def test_drawing_in_worker_processes_gives_the_same_report(tmp_path, image_dir, monkeypatch):
    import reportgen.drawpool as drawpool

    drawn_here = []  # images drawn in this process (spawned workers import their own, unpatched module)
    inline_draw = drawpool._draw
    monkeypatch.setattr(drawpool, "_draw",
                        lambda ctx, image: drawn_here.append(image.record.index) or inline_draw(ctx, image))

    def run_with(draw_workers: int, name: str):
        cfg = load_config(write_config(tmp_path, image_dir, run={
            "output": str(tmp_path / name), "cache_dir": str(tmp_path / f"cache-{name}"), "device": "cpu",
            "batch_size": 3, "draw_workers": draw_workers}))
        return run(cfg).stats, cfg.run.output

    s0, inline = run_with(0, "inline")
    assert sorted(drawn_here) == list(range(N_IMAGES))
    drawn_here.clear()
    s2, pooled = run_with(2, "pooled")
    assert (s0.draw_workers, s2.draw_workers) == (0, 2)
    assert drawn_here == [], "with draw_workers: 2 the images were drawn in the main process"
    per_run = ("report.html", "manifest.json", ".reportgen-run.json")  # carry the run's time or id
    files = sorted(p.relative_to(inline) for p in inline.rglob("*") if p.is_file() and p.name not in per_run)
    assert files == sorted(p.relative_to(pooled) for p in pooled.rglob("*") if p.is_file() and p.name not in per_run)
    for rel in files:
        assert (inline / rel).read_bytes() == (pooled / rel).read_bytes(), rel
    a, b = (json.loads((p / "manifest.json").read_text())["images"] for p in (inline, pooled))
    assert a == b
    assert s2.seconds["draw"] > 0


def test_draw_workers_config(tmp_path, image_dir):
    from reportgen.errors import ConfigError

    for bad, message in (("many", "expected 'auto' or a number"), (-1, "expected 'auto' or 0..64")):
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path, image_dir, run={"output": str(tmp_path / "o"), "draw_workers": bad}))
    cfg = load_config(write_config(tmp_path, image_dir, run={"output": str(tmp_path / "o")}))
    assert cfg.run.draw_workers == "auto"


# ------------------------------------------------------------------ features a run must really use (issue 10)


def _labelled_images(root, folders):
    from PIL import Image

    rng = np.random.default_rng(1)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(root / folder / "x.png")
    return root


def test_class_folders_by_imagenet_name_and_index_explain_that_class(tmp_path):
    data = _labelled_images(tmp_path / "imgs", ["egyptian_cat", "285_egyptian_cat", "Egyptian cat", "nosuchclass"])
    model = {"source": "factory", "name": "tinynets:tiny_cnn", "num_classes": 1000, "labels": "imagenet",
             "preprocess": {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    cfg = load_config(write_config(tmp_path, data, model=model, kernels={"layers": []}, feature_maps={"layers": []},
                                   cams={"methods": ["gradcam"], "layers": ["features.5"], "target": "true"}))
    images = {i["label"]: i for i in json.loads(run(cfg).manifest.read_text())["images"]}
    for folder in ("egyptian_cat", "285_egyptian_cat", "Egyptian cat"):
        (group,) = images[folder]["cams"]
        assert (group["target_kind"], group["target_index"]) == ("true", 285), folder
    (group,) = images["nosuchclass"]["cams"]
    assert group["target_kind"] == "predicted (no label)"
    assert group["target_index"] == images["nosuchclass"]["predictions"][0]["class_index"]


def test_labels_file_names_classes_and_class_folders(tmp_path):
    names = [f"name{i}" for i in range(10)]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n", encoding="utf-8")
    data = _labelled_images(tmp_path / "imgs", ["name7", "3_other"])
    model = {"source": "factory", "name": "tinynets:tiny_cnn", "labels": str(labels),
             "preprocess": {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}}
    cfg = load_config(write_config(tmp_path, data, model=model, kernels={"layers": []}, feature_maps={"layers": []},
                                   cams={"methods": ["gradcam"], "layers": ["features.5"], "target": "true"}))
    result = run(cfg)
    images = {i["label"]: i for i in json.loads(result.manifest.read_text())["images"]}
    assert images["name7"]["cams"][0]["target_index"] == 7 and images["3_other"]["cams"][0]["target_index"] == 3
    for image in images.values():
        for p in image["predictions"]:
            assert p["class_name"] == names[p["class_index"]]
    assert "name7" in (result.html).read_text(encoding="utf-8")


def test_target_class_index_and_crop_resize_in_a_run(tmp_path, image_dir):
    def run_with(resize: str, target, name: str):
        model = {"source": "factory", "name": "tinynets:tiny_cnn", "labels": "none",
                 "preprocess": {"size": 32, "resize": resize, "mean": [0.5] * 3, "std": [0.25] * 3}}
        cfg = load_config(write_config(tmp_path, image_dir, model=model, kernels={"layers": []},
                                       feature_maps={"layers": []},
                                       cams={"methods": ["gradcam"], "layers": ["features.5"], "target": target},
                                       run={"output": str(tmp_path / name), "cache_dir": str(tmp_path / "cache"),
                                            "device": "cpu", "batch_size": 3}))
        manifest = json.loads(run(cfg).manifest.read_text())
        return manifest, [load_file(str(cfg.run.output / i["maps_file"])) for i in manifest["images"]]

    crop, crop_maps = run_with("crop", 7, "crop")
    assert crop["model"]["resize"] == "crop"
    for image, maps in zip(crop["images"], crop_maps, strict=True):
        (group,) = image["cams"]
        assert (group["target_kind"], group["target_index"]) == ("class", 7)
        assert maps["cam/gradcam/features.5/targets"].tolist() == [7]
    squash, squash_maps = run_with("squash", 7, "squash")
    assert squash["model"]["resize"] == "squash"
    for a, b in zip(crop_maps, squash_maps, strict=True):  # 40x32 photos: a centre crop is not the squashed whole
        assert not np.allclose(a["logits"], b["logits"])


def test_filters_section_in_a_real_run(tmp_path, image_dir):
    filters = {"layers": ["features.5"], "channels": [0, 3], "size": 32, "steps": 4, "seed": 0}
    cfg = load_config(write_config(tmp_path, image_dir, filters=filters, feature_maps={"layers": []},
                                   cams={"methods": ["gradcam"], "layers": ["features.5"]}))
    result = run(cfg)
    manifest = json.loads(result.manifest.read_text())
    (entry,) = manifest["filters"]
    srcs = _img_srcs(result.html)
    figures = [s for s in srcs if "filter" in s]
    assert figures and all((cfg.run.output / s).is_file() for s in figures), srcs
    assert entry["layer"] == "features.5" and [c for c in entry["channels"]] == [0, 3]


def test_interrupted_forced_run_exits_130_and_keeps_the_previous_report(tmp_path, image_dir, monkeypatch, capsys):
    import reportgen.report as report

    path = write_config(tmp_path, image_dir)
    assert main(["run", str(path), "--quiet"]) == 0
    out = tmp_path / "out"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render_html", interrupted)  # Ctrl-C once the new report is half built
    assert main(["run", str(path), "--quiet", "--force"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache", "config.yaml", "images", "out"])


def test_manifest_is_written_last(tmp_path, image_dir, monkeypatch):
    import reportgen.atomic as atomic

    seen = {}
    real_swap = atomic.swap_into_place

    def swap(new, target):  # the staging folder as it is published
        seen.update({p.relative_to(new): p.stat().st_mtime_ns for p in new.rglob("*") if p.is_file()})
        return real_swap(new, target)

    import reportgen.publish as publish

    monkeypatch.setattr(publish, "swap_into_place", swap)
    run(load_config(write_config(tmp_path, image_dir, report={"pdf": True, "image_size": 96})))
    from pathlib import Path

    manifest = seen.pop(Path("manifest.json"))
    assert Path("report.pdf") in seen and Path("report.html") in seen
    assert all(t <= manifest for t in seen.values()), [str(p) for p, t in seen.items() if t > manifest]
