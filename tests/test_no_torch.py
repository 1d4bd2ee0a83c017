"""The engine must run where torch cannot be imported (STYLE.md §1).

Each check runs in a subprocess (the pytest process may already hold torch) that uses the
engine's public calls — load, generate, stream, score, the device loop, info, embed — and then
asserts that none of torch, transformers or optimum was imported on the way.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BANNED_CHECK = """
banned = [m for m in ("torch", "transformers", "optimum", "seqport.export") if m in sys.modules]
assert not banned, banned
print("ok")
"""


def _run_torch_free(code: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + BANNED_CHECK], capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("ok")


def test_engine_generates_without_importing_torch(tiny_artifact):
    _run_torch_free(f"""
        import sys
        import seqport.engine as sp
        import seqport.runtimes.onnxruntime
        path = {str(tiny_artifact)!r}
        model = sp.load(path)
        result = model.generate(["the cat sat on the mat"], max_new_tokens=4)
        assert len(result[0].ids) >= 1, result
        pieces = list(model.stream(["the cat sat on the mat", "a dog"], max_new_tokens=4))
        assert pieces and pieces[-1].finish_reason is not None, pieces
        scored = model.score(["the cat sat on the mat"], [[5, 6, 7]])
        assert len(scored[0].token_logprobs) == 3 and scored[0].score < 0, scored
        device = sp.load(path, options=sp.RuntimeOptions(device_loop=True))
        on_device = device.generate(["the cat sat on the mat"], max_new_tokens=4)
        assert on_device[0].ids == result[0].ids, (on_device, result)
        from seqport.cli.main import main
        assert main(["info", path]) == 0
    """)


@pytest.fixture(scope="session")
def encoder_artifact(tmp_path_factory) -> Path:
    """A tiny BERT feature-extraction artifact, exported once here (torch needed to build it)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_hf_encoder import FE, Row, _write_folder

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("no_torch_encoder")
    _write_folder(Row("bert", FE, ("mean",), normalize=True), root / "checkpoint")
    export_model(root / "checkpoint", root / "artifact", progress=False)
    return root / "artifact"


@pytest.mark.export
def test_engine_embeds_without_importing_torch(encoder_artifact):
    """The artifact is built with torch; the subprocess that embeds with it has none."""
    _run_torch_free(f"""
        import sys
        import numpy as np
        import seqport.engine as sp
        model = sp.load({str(encoder_artifact)!r})
        vectors = model.embed(["the cat sat on the mat", "numbers"])
        assert vectors.shape == (2, 20) and vectors.dtype == np.float32, vectors.shape
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    """)


def test_python_dash_m_runs_the_cli(tiny_artifact):
    """`python -m seqport.cli` is the `seqport` command (the console script's module)."""
    run = subprocess.run(
        [sys.executable, "-m", "seqport.cli", "info", str(tiny_artifact)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert f"artifact: {tiny_artifact}" in run.stdout and "runtimes (RuntimeOptions.backend" in run.stdout


def test_export_and_demo_say_what_to_install_without_torch():
    """Where the export side cannot be imported, the two commands that need it fail in one line."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = sys.modules["onnx"] = None  # as on a runtime-only install
        from seqport.cli.main import main
        assert main(["export", "checkpoint", "out"]) == 1
        assert main(["demo"]) == 1
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("seqport: error: `seqport export` needs the export extra: pip install 'seqport[export]'")
    assert lines[1].startswith("seqport: error: `seqport demo` needs the export extra (torch): pip install")
    assert all(line.endswith("is missing)") for line in lines)


@pytest.fixture(scope="session")
def chat_artifact(tmp_path_factory) -> Path:
    """A tiny Llama artifact with a ChatML template, exported once here (torch needed to build it)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_chat import SMOLLM2, _checkpoint

    from seqport.export.pipeline import export_model

    root = tmp_path_factory.mktemp("no_torch_chat")
    export_model(_checkpoint(root / "checkpoint", SMOLLM2), root / "artifact", progress=False)
    return root / "artifact"


@pytest.mark.export
def test_engine_chats_without_importing_torch(chat_artifact):
    """Templates render with jinja2 alone: chat, stream_chat and `seqport generate --chat`."""
    _run_torch_free(f"""
        import sys
        import seqport.engine as sp
        model = sp.load({str(chat_artifact)!r})
        messages = [{{"role": "user", "content": "numbers"}}]
        prompt = model.apply_chat_template(messages)
        assert prompt[0] == model.tokenizer.token_to_id("<|im_start|>"), prompt
        reply = model.chat(messages, max_new_tokens=4)
        assert "".join(p.text for p in model.stream_chat(messages, max_new_tokens=4)) == reply.text
        from seqport.cli.main import main
        assert main(["generate", {str(chat_artifact)!r}, "--chat", "numbers", "--max-new-tokens", "4"]) == 0
    """)
