"""Issue 15, item 8: no tracebacks and no surprises in the CLI, tried as a new user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from sims.cli import main
from synthesis.synthesize_files import output_names

REPO = Path(__file__).resolve().parents[1]
LAYOUT = REPO / "examples/camvid-sample/valannot/0016E5_07959.png"
NO_NETS = ["--refine", "none", "--transform", "none", "--ordering", "none", "--no-progress"]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line the CLI printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "sims.cli", "--version"], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"sims \S+\n", done.stdout)


def test_missing_layout_is_one_line(
    val_bank_path: Path, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["synthesize", "--bank", str(val_bank_path), "--weights", str(tiny_weights), *NO_NETS]
    assert main([*args, "-l", "/nonexistent.png", "-o", str(tmp_path / "x.png")]) == 2
    assert "/nonexistent.png" in one_error_line(capsys)


def test_config_value_of_the_wrong_type_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = json.loads((REPO / "configs/synthesis/tiny.json").read_text())
    config["train"]["steps"] = "ten"
    (tmp_path / "bad.json").write_text(json.dumps(config))
    assert main(["train", "synthesis", "-c", str(tmp_path / "bad.json"), "-o", str(tmp_path / "run")]) == 2
    assert "steps" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["index", "build", "--bogus"], "No such option: --bogus"),
        (["synthesize", "--k", "ten", "-l", "x.png", "-o", "y.png"], "'--k'"),
        (["index", "frobnicate"], "frobnicate"),
        (["serve", "--port"], "--port"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert says in line and "--help'" in line
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--bank", "{bank}", "--synthesis-timeout", "-1"], "invalid Settings: synthesis_timeout: Input"),
        (["worker", "--queue", "-1"], "invalid WorkerSettings: queue: Input should be greater than or equal to 0"),
    ],
)
def test_bad_settings_are_one_line_without_links(
    argv: list[str], says: str, val_bank_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.format(bank=val_bank_path) for a in argv]) == 2
    line = one_error_line(capsys)
    assert says in line and "errors.pydantic.dev" not in line and "input_value" not in line, line


def test_help_still_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--help"]) == 0
    assert "build" in capsys.readouterr().out


def test_unexpected_errors_are_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import indexers.cli

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(indexers.cli, "open_bank", broken)
    assert main(["index", "verify", "/somewhere"]) == 1
    line = one_error_line(capsys)
    assert "RuntimeError: a bug over two lines" in line and "SIMS_DEBUG=1" in line


def test_jpeg_out_with_one_layout_is_a_file(val_bank_path: Path, tiny_weights: Path, tmp_path: Path) -> None:
    assert output_names([LAYOUT], Path("x.jpg"), [0]) == [[Path("x.jpg")]]
    assert output_names([LAYOUT], Path("x.JPEG"), [0, 1]) == [[Path("x-seed0.JPEG"), Path("x-seed1.JPEG")]]
    with pytest.raises(ValueError, match=r"\.gif"):
        output_names([LAYOUT], Path("x.gif"), [0])  # not a directory named x.gif
    out = tmp_path / "x.jpg"
    args = ["synthesize", "--bank", str(val_bank_path), "--weights", str(tiny_weights), *NO_NETS]
    assert main([*args, "-l", str(LAYOUT), "-o", str(out), "--unlabelled", "11"]) == 0
    assert out.is_file()
    with Image.open(out) as img:
        assert img.format == "JPEG"
        assert np.asarray(img).shape == (360, 480, 3)


def test_eval_writes_outside_docs_by_default() -> None:
    from synthesis.cli.evaluate import app

    command = typer.main.get_command(app)
    default = Path(next(p for p in command.params if p.name == "out").default)
    assert "docs" not in default.parts
    assert default.parts[0] == "outputs"  # git-ignored


def test_train_synthesis_without_vgg_says_how_to_get_it(
    val_bank_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SIMS_VGG_WEIGHTS", raising=False)
    config = str(REPO / "configs/synthesis/tiny.json")
    assert main(["train", "synthesis", "-c", config, "-o", str(tmp_path / "run"), "-b", str(val_bank_path)]) == 2
    assert "sims train fetch-vgg" in one_error_line(capsys)
    missing = ["--vgg-weights", str(tmp_path / "nope.pth")]
    assert (
        main(["train", "synthesis", "-c", config, "-o", str(tmp_path / "run"), "-b", str(val_bank_path), *missing]) == 2
    )
    assert "sims train fetch-vgg" in one_error_line(capsys)


def test_fetch_vgg_uses_the_fetch_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import synthesis.networks.vgg as vgg

    calls: list[Path] = []

    def fake_fetch(model_dir: Path) -> Path:
        calls.append(Path(model_dir))
        return Path(model_dir) / "vgg19-dcbb9e9d.pth"

    monkeypatch.setattr(vgg, "fetch_imagenet_vgg19", fake_fetch)
    assert main(["train", "fetch-vgg", "--dir", str(tmp_path)]) == 0
    assert calls == [tmp_path]
    out = capsys.readouterr().out
    assert str(tmp_path / "vgg19-dcbb9e9d.pth") in out and '"convention": "imagenet"' in out

    def offline(model_dir: Path) -> Path:
        raise OSError("network is unreachable")

    monkeypatch.setattr(vgg, "fetch_imagenet_vgg19", offline)
    assert main(["train", "fetch-vgg", "--dir", str(tmp_path)]) == 2
    assert "cannot download" in one_error_line(capsys)


def test_readme_opens_the_bank_the_quickstart_builds() -> None:
    quickstart = (REPO / "scripts/quickstart.sh").read_text()
    built = re.search(r'bank="\$\{SIMS_BANK:-([^}]+)\}"', quickstart)
    assert built is not None
    opened = re.findall(r'open_bank\("([^"]+)"', (REPO / "README.md").read_text())
    assert opened and set(opened) == {built.group(1)}
