"""The manifest read as untrusted input, and the export folder's lifecycle: validated shape, paths
confined to the folder, sources checked by hash, re-export over a corrupt export, stale staging
folders cleaned, static dims and bounded envelopes, lazily loaded components."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import assert_error, zoo

from exporters.artifacts import clean_stale
from exporters.manifest import load_manifest
from exporters.onnx import export_family
from runtimes.backends import load_reference
from zoo.contract import Range, Source
from zoo.errors import ArtifactError
from zoo.registry import get_family


@pytest.fixture
def export_copy(tiny_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(tiny_export("transformer-temporal", "default"), out)
    return out


def _edit(export, change):
    path = export / "manifest.json"
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))


def _set(path: list, value):
    def change(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return d

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: [], r"manifest is list, expected an object"),
        (lambda d: None, r"manifest is NoneType, expected an object"),
        (_set(["components"], 5), r"manifest.components is int 5, expected dict"),
        (
            _set(["components", "transformer", "dims", "frames", "max"], 2.5),
            r"components.transformer.dims.frames is malformed",
        ),
        (
            _set(["components", "transformer", "dims", "frames", "min"], "4"),
            r"components.transformer.dims.frames is malformed",
        ),
        (
            _set(["components", "transformer", "inputs", 0, "shape", 2], "nope"),
            r"names dim 'nope', which the component does not declare",
        ),
        (
            _set(["components", "transformer", "inputs", 0, "dtype"], "float128"),
            r"dtype is 'float128', expected one of",
        ),
        (
            _set(["components", "transformer", "size"], True),
            r"components.transformer.size is True, expected an integer",
        ),
        (_set(["envelope", "frames", "opt"], None), r"envelope.frames.opt is None, expected an integer"),
        (_set(["sources"], []), r"sources is empty"),
        (_set(["format_version"], 1), r"has format version 1 .*, this zoo reads 3: re-export"),
        (
            _set(["format_version"], 2),
            r"has format version 2 \(its sources' hashes read only a sample of large files\), "
            r"this zoo reads 3: re-export",
        ),
    ],
)
def test_manifest_of_the_wrong_shape_is_an_artifact_error(export_copy, change, message):
    _edit(export_copy, change)
    with pytest.raises(ArtifactError, match=message):
        load_manifest(export_copy)
    result = zoo("parity", export_copy)  # and the command line says so in one line, exit 2
    assert result.exit_code == 2 and result.output.startswith("error: ") and "internal" not in result.output


@pytest.mark.parametrize(
    "field, value",
    [
        (["components", "transformer", "file"], "../../../etc/hostname"),
        (["components", "transformer", "file"], "/etc/hostname"),
        (["components", "transformer", "external_data"], {"../outside.data": 3}),
        (["sources", 0, "path"], "../../elsewhere"),
    ],
)
def test_paths_leaving_the_export_folder_are_refused(export_copy, field, value):
    _edit(export_copy, _set(field, value))
    with pytest.raises(ArtifactError, match=r"is not a path inside the export folder; refused"):
        load_manifest(export_copy)


def test_a_link_out_of_the_export_folder_is_refused(export_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(export_copy / "transformer" / "model.onnx", outside / "model.onnx")
    shutil.rmtree(export_copy / "transformer")
    os.symlink(outside, export_copy / "transformer")
    with pytest.raises(ArtifactError, match=r"'transformer/model.onnx' leads outside the export folder \(a link\)"):
        load_manifest(export_copy)


def test_swapped_random_reference_is_caught_by_its_hash(export_copy, tmp_path):
    fam = get_family("transformer-temporal")
    other = fam.build_random(tmp_path / "other", variant="default", seed=7)  # the same model, another seed
    shutil.rmtree(export_copy / "reference" / "model")
    shutil.copytree(other, export_copy / "reference" / "model")
    with pytest.raises(ArtifactError, match=r"the model source .* changed since the export .*re-export"):
        load_reference(load_manifest(export_copy))


def test_reexport_replaces_an_export_whose_manifest_is_corrupt(export_copy):
    (export_copy / "manifest.json").write_text("{corrupt")
    result = zoo("export", "transformer-temporal", "--tiny", "--out", export_copy)
    assert result.exit_code == 0, result.output
    assert load_manifest(export_copy).family == "transformer-temporal"


def test_a_foreign_folder_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "mine" / "manifest.json").write_text("{}")
    result = zoo("export", "transformer-temporal", "--tiny", "--out", tmp_path / "mine")
    assert result.exit_code == 2 and "is not a zoo export folder" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_staging_folders_of_a_killed_export_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".export.staging-{pid}-deadbeef"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"partial")
    live = tmp_path / f".export.staging-{os.getpid()}-cafecafe"  # a running export's: kept
    live.mkdir()
    assert clean_stale(tmp_path / "export") == [stale]
    assert not stale.exists() and live.exists()
    result = zoo("export", "transformer-temporal", "--tiny", "--out", tmp_path / "export")
    assert result.exit_code == 0 and live.exists()


def test_static_dims_export_and_run(tmp_path):
    """`--height 64` (one value) is a static dim: exported as a fixed size, not a failure at the VAE."""
    out = tmp_path / "static"
    result = zoo(
        "export", "pixart", "--tiny", "--height", "64", "--width", "32", "--component", "vae_decoder", "--out", out
    )
    assert result.exit_code == 0, result.output
    record = load_manifest(out).component("vae_decoder")
    assert record.dims["height"].min == record.dims["height"].max == 64
    import onnx

    graph = onnx.load(str(out / "vae_decoder" / "model.onnx"), load_external_data=False)
    dims = [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims[2:] == [64, 32]
    result = zoo("parity", out)  # the component passes; the sampler of a partial export did not run
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1].startswith("passed what ran; 1 check not run (")


def test_envelope_without_an_upper_bound_is_refused(tmp_path):
    result = zoo("export", "pixart", "--tiny", "--height", "32:64:65536", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--height 32:64:65536: height can be at most" in result.output
    assert not (tmp_path / "o").exists()


def test_one_component_loads_one_module_and_is_a_partial_export(tiny_checkpoint, tmp_path):
    """An export of one component loads that module only, and is a partial export: `zoo run` names
    what it lacks, `zoo parity` passes the component and is not a pass (exit 3)."""
    fam = get_family("pixart")
    ref = fam.load(tiny_checkpoint("pixart", "sigma"))
    out = tmp_path / "o"
    export_family(fam, ref, fam.envelope(ref), out, components=("transformer",), progress=False)
    assert set(ref.modules.loaded()) == {"transformer", "tokenizer", "scheduler"}  # no T5, no VAE weights
    assert set(load_manifest(out).components) == {"transformer"}
    assert_error(
        zoo("run", out, "--prompt", "x", "--out", tmp_path / "x.png"),
        "lacks component(s) text_encoder, vae_decoder that the sampler runs",
    )
    result = zoo("parity", out)  # the sampler of a partial export did not run: not a pass (exit 3)
    assert result.exit_code == 3, result.output
    assert "NOT RUN end_to_end sampler: the export lacks text_encoder, vae_decoder (a partial export" in result.output
    assert result.output.strip().splitlines()[-1].startswith("passed what ran; 1 check not run (")


def test_export_prints_the_whole_size(external_data_export):
    out, output = external_data_export  # weights beside the graph
    record = load_manifest(out).component("transformer")
    assert record.external_data and record.size_on_disk > record.size
    assert f"({record.size_on_disk / 1e3:.1f} kB, float32)" in output
    assert f"({record.size_on_disk / 1e3:.1f} kB in all)" in output


def test_sources_of_another_family_are_refused(tiny_checkpoint):
    with pytest.raises(Exception, match="family 'pixart' takes no motion_adapter source"):
        get_family("pixart").load(
            (Source("model", tiny_checkpoint("pixart")), Source("motion_adapter", tiny_checkpoint("pixart")))
        )


def test_derived_dims_profiles_follow_the_source():
    from zoo.contract import Dim, resolve_point

    latent = Dim.of_range("latent_frames", Range(2, 5, 9))
    pixel = Dim.derived("pixel_frames", latent, scale=4, offset=-3)  # 4(T-1)+1
    assert (pixel.min, pixel.opt, pixel.max) == (5, 17, 33)
    assert pixel.source_value(21) == 6 and pixel.source_value(20) is None
    assert resolve_point({"latent_frames": latent, "pixel_frames": pixel}, {"latent_frames": 3}) == {
        "latent_frames": 3,
        "pixel_frames": 9,
    }
    assert pixel.formula() == "4 x latent_frames - 3"
