"""`jscale corpus`: a corpus from the Python source of pinned packages, built end to end on tiny archives made here
(no network): reproducible splits with a manifest, readable as bin:DIR by training, and one-line errors."""

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest

from jscale import config, data, resolve

SOURCE = "def f{i}(x):\n    '''Return x plus {i}.'''\n    return x + {i}\n\n"


def _archives(folder):
    """A wheel and an sdist of two tiny packages (the sdist vendors one file of the wheel, which is left out)."""
    folder.mkdir()
    with zipfile.ZipFile(folder / "alpha-1.0-py3-none-any.whl", "w") as z:
        for k in range(40):
            z.writestr(f"alpha/mod{k}.py", "".join(SOURCE.format(i=i) for i in range(k * 60, k * 60 + 60)))
        z.writestr("alpha-1.0.dist-info/METADATA", "Name: alpha\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for k in range(20):
            body = ("".join(SOURCE.format(i=i) for i in range(5000 + 50 * k, 5050 + 50 * k))
                    if k else "".join(SOURCE.format(i=i) for i in range(0, 60))).encode()  # k = 0: alpha/mod0.py
            info = tarfile.TarInfo(f"beta-2.0/src/beta/part{k}.py")
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    (folder / "beta-2.0.tar.gz").write_bytes(buf.getvalue())


def test_a_package_corpus_is_reproducible_has_a_manifest_and_trains(tmp_path, jscale_here):
    _archives(tmp_path / "dl")
    for out in ("a", "b"):
        jscale_here("corpus", "--packages", "alpha==1.0", "beta==2.0", "--archives", str(tmp_path / "dl"),
                    "--out", str(tmp_path / out), check=0)
    for name in ("train.bin", "val.bin", "test.bin", "manifest.json", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name  # identical
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["packages"] == ["alpha==1.0", "beta==2.0"] and len(manifest["archives"]) == 2
    paths = [f["path"] for f in manifest["files"]]
    assert len(paths) == 40 + 19  # the vendored copy of alpha/mod0.py is taken once
    assert not any("dist-info" in p for p in paths)
    split_bytes = {s: v["tokens"] for s, v in manifest["splits"].items()}
    total = sum(split_bytes.values())
    assert total == sum(f["bytes"] for f in manifest["files"]) + sum(v["documents"]
                                                                     for v in manifest["splits"].values())
    assert 0.6 < split_bytes["train"] / total and min(split_bytes.values()) > 0
    # what training reads: bin:DIR of bytes
    cfg = resolve.resolve(config.from_dict({"data": {"corpus": f"bin:{tmp_path / 'a'}", "bin_dtype": "uint8",
                                                     "eval_windows": 4},
                                            "model": {"n_ctx": 32}}))
    assert cfg.model.vocab_size == 256
    corpus = data.prepare(cfg.data)
    text = bytes(np.asarray(corpus.train[:200])).decode()
    assert "def f" in text and corpus.bytes_per_token("test") == 1


@pytest.mark.parametrize("args, message", [
    (["--packages", "alpha"], "--packages: 'alpha' is not pinned"),
    ([], "--packages: give at least one pinned package"),
    (["--packages", "alpha==1.0", "--archives", "nowhere"], "--archives: nowhere: not a directory"),
])
def test_bad_corpus_requests_are_one_line_errors(tmp_path, args, message, jscale_here):
    r = jscale_here("corpus", *args, "--out", str(tmp_path / "out"), check=2)
    assert r.stderr.strip().count("\n") == 0 and message in r.stderr, r.stderr
    assert not (tmp_path / "out" / "train.bin").exists()
