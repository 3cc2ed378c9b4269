"""benchmarks/deploy_accuracy.py on a small run folder: ONNX Runtime gives PyTorch's tokens on every
test example, the page section and JSON say so (and say SYNTHETIC), bad input is one line."""
import json
import shutil

import pytest

from benchmarks import deploy_accuracy
from eas.model.config import VisionConfig
from export_fixtures import exported

BEGIN, END = deploy_accuracy.BEGIN, deploy_accuracy.END


@pytest.fixture
def run_folder(tmp_path):
    """A run folder as `run.py tune` leaves it: merged.pt (the LaVIN static test model) and report.json
    whose settings rebuild a small synthetic AID test split at the model's image size."""
    run = tmp_path / "runs" / "aid"
    run.mkdir(parents=True)
    source = exported("lavin", "static").parent
    shutil.copy(source / "merged.pt", run / "merged.pt")
    shutil.copy(source.parent / "tokenizer.model", run.parent / "tokenizer.model")  # merged.pt names ../tokenizer.model
    config = {"task": "aid", "data_root": None, "cache_dir": str(tmp_path / "cache"), "setting": "20", "seed": 0,
              "synthetic_per_class": 3}
    (run / "report.json").write_text(json.dumps({"config": config}))
    assert VisionConfig.named("test").image_size >= 8  # the smallest synthetic image
    return run


def test_onnx_runtime_gives_pytorch_s_tokens_and_the_page_says_so(run_folder, tmp_path, capsys):
    doc = tmp_path / "DEPLOY.md"
    doc.write_text(f"# page\n\n{BEGIN}\nold text\n{END}\n\nafter\n")
    assert deploy_accuracy.main([str(run_folder), "--doc", str(doc), "--batch", "5", "--max-test", "12"]) == 0
    result = json.loads((run_folder / "deploy_accuracy.json").read_text())
    assert result["n"] == 12 and result["identical_tokens"] == 12 and result["synthetic"]
    assert result["accuracy"]["pytorch"] == result["accuracy"]["onnxruntime"]
    assert result["template_prompt_is_tuning_prompt"] is True
    page = doc.read_text()
    assert page.startswith("# page\n\n" + BEGIN) and page.endswith(f"{END}\n\nafter\n") and "old text" not in page
    assert "identical answer tokens: 12 / 12 (aid (SYNTHETIC))" in page and "SYNTHETIC data" in page
    assert f"python benchmarks/deploy_accuracy.py {run_folder} --doc {doc}" in page
    assert capsys.readouterr().out.strip() in page


def test_bad_input_is_one_line(run_folder, tmp_path, capsys):
    doc = tmp_path / "plain.md"
    doc.write_text("no markers\n")
    assert deploy_accuracy.main([str(run_folder), "--doc", str(doc)]) == 2
    assert capsys.readouterr().err == f"error: --doc {doc}: expected one {BEGIN} ... {END} pair to write between\n"
    assert doc.read_text() == "no markers\n" and not (run_folder / "deploy_accuracy.json").exists()
    doc.write_text(f"{BEGIN}\n{END}\n")
    assert deploy_accuracy.main([str(tmp_path / "nowhere"), "--doc", str(doc)]) == 2
    assert str(tmp_path / "nowhere" / "merged.pt") in capsys.readouterr().err
