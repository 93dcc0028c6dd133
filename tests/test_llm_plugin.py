"""The simonw/llm plugin (malmm_cli/llm_plugin.py): `llm -m malmm -a clip.mp4 [QUESTION]` answers as
`malmm ask` / `malmm caption` answer, with the model loaded in-process or from a running `malmm
serve` (-o server), through llm's Python API and its command line. llm's own files (keys, logs) go
to a temporary LLM_USER_PATH."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

llm = pytest.importorskip("llm")
pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from click.testing import CliRunner  # noqa: E402
from llm.cli import cli  # noqa: E402

from tests.conftest import REPO  # noqa: E402
from tests.serving import KEY, Clips, Running, make_clips, serve_tiny  # noqa: E402

QUESTION = "what is the man doing?"
FAST = {"device": "cpu", "num_beams": 1, "max_tokens": 5}  # conftest.FAST in llm's options


@pytest.fixture(autouse=True)
def _private_llm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llm's keys, logs and aliases live in a temporary folder; no MALMM_API_KEY from the shell."""
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path / "llm-user"))
    monkeypatch.delenv("MALMM_API_KEY", raising=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return make_clips(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def served(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    yield from serve_tiny(tiny_llama_dir, clips)


def llm_cli(*args: object) -> tuple[int, str]:
    """`llm ARGS` in-process (stdin empty, as a pipe): the exit code and what it printed."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args], input="")
    return result.exit_code, result.output


def options(**given: object) -> list[str]:
    return [item for name, value in given.items() for item in ("-o", name, str(value))]


def test_the_plugin_is_registered_by_its_entry_point() -> None:
    """`llm models` lists it, from the entry point in pyproject (the package must be installed)."""
    code, output = llm_cli("models")
    assert code == 0 and "malmm" in output, output
    assert llm.get_model("malmm").model_id == "malmm"


def test_importing_the_plugin_loads_no_torch() -> None:
    """llm imports every plugin at start-up: `llm models` must not wait for torch."""
    code = "import sys, malmm_cli.llm_plugin; print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = set(done.stdout.split())
    assert not {"torch", "transformers", "malmm_cli.reading", "cv2", "av"} & loaded


def test_a_question_from_python_equals_malmm_ask(
    tiny_llama_dir: Path, clips: Clips, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llm's Python API; the model loads once for two prompts to the same model object."""
    from malmm_cli.jobs import serve

    loads = []
    load_service = serve.load_service
    monkeypatch.setattr(serve, "load_service", lambda *a: loads.append(a) or load_service(*a))
    model = llm.get_model("malmm")
    attachment = llm.Attachment(path=str(clips.short))
    response = model.prompt(QUESTION, attachments=[attachment], frames=4, model=str(tiny_llama_dir), **FAST)
    cli = run("ask", clips.short, QUESTION, "--frames", "4")
    assert cli.exit_code == 0, cli.stderr
    assert response.text() == cli.stdout.rstrip("\n")
    assert response.json()["answers"][0]["question"] == QUESTION
    conversation = model.conversation()  # `llm -c`: a follow-up asks about the conversation's video
    conversation.prompt(QUESTION, attachments=[attachment], frames=4, model=str(tiny_llama_dir), **FAST).text()
    follow_up = conversation.prompt("and then?", frames=4, model=str(tiny_llama_dir), **FAST)
    assert follow_up.text() == run("ask", clips.short, "and then?", "--frames", "4").stdout.rstrip("\n")
    assert len(loads) == 1


def test_no_prompt_is_a_caption_as_malmm_caption_makes(tiny_llama_dir: Path, clips: Clips, run) -> None:
    """`llm -m malmm -a clip.mp4` with no prompt; -o segment captions every second too."""
    given = options(model=tiny_llama_dir, frames=4, segment="1s", **FAST)
    code, output = llm_cli("-m", "malmm", "-a", clips.short, *given)
    cli = run("caption", clips.short, "--frames", "4", "--segment", "1s")
    assert cli.exit_code == 0, cli.stderr
    assert code == 0, output
    assert output == cli.stdout
    assert len(output.splitlines()) == 4  # the caption and three segments


def test_the_server_gives_the_same_answers(served: Running, clips: Clips, run) -> None:
    """-o server: the clip uploaded (the default), or named by its path (-o send_path true, a folder
    the server allows); the key from -o api_key, or from `llm keys set malmm`."""
    cli = run("ask", clips.short, QUESTION, "--frames", "4")
    uploaded = llm_cli("-m", "malmm", "-a", clips.short, QUESTION, *options(server=served.url, api_key=KEY, frames=4))
    assert uploaded == (0, cli.stdout), uploaded[1]
    assert llm_cli("keys", "set", "malmm", "--value", KEY)[0] == 0
    by_path = llm_cli("-m", "malmm", "-a", clips.short, QUESTION, *options(server=served.url, send_path="true",
                                                                            frames=4))  # fmt: skip
    assert by_path == (0, cli.stdout), by_path[1]
    caption = run("caption", clips.short, "--frames", "4")
    by_v1 = llm_cli("-m", "malmm", "-a", clips.short, *options(server=f"{served.url}/v1", frames=4))
    assert by_v1 == (0, caption.stdout), by_v1[1]


def test_the_servers_refusals_are_said(served: Running, clips: Clips) -> None:
    """A wrong key, a path outside the allowed folders, a bad option: the server's message, no traceback."""
    code, output = llm_cli("-m", "malmm", "-a", clips.short, *options(server=served.url, api_key="wrong"))
    assert code == 1 and "the malmm server refused (401)" in output and "Traceback" not in output, output
    code, output = llm_cli("-m", "malmm", "-a", clips.outside,
                           *options(server=served.url, api_key=KEY, send_path="true"))  # fmt: skip
    assert code == 1 and "refused (403)" in output, output
    code, output = llm_cli("-m", "malmm", "-a", clips.short, *options(server=served.url, api_key=KEY, frames=0))
    assert code == 1 and "Invalid value for 'frames': must be 1 or more, not 0" in output, output
    code, output = llm_cli("-m", "malmm", "-a", clips.short, *options(server=served.url, device="cpu"))
    assert code == 1 and "-o device is for the model loaded here" in output, output


def test_attachments_that_are_not_read(tmp_path: Path, clips: Clips, tiny_llama_dir: Path) -> None:
    """A still, two videos, none: each a one-line error before any model loads."""
    still = tmp_path / "still.png"
    still.write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"))
    code, output = llm_cli("-m", "malmm", "-a", still, QUESTION)
    assert code == 1 and "does not support attachments of type 'image/png'" in output, output
    code, output = llm_cli("-m", "malmm", "-a", clips.short, "-a", clips.outside, QUESTION)
    assert code == 1 and "one video per prompt: this one has 2" in output, output
    code, output = llm_cli("-m", "malmm", QUESTION)
    assert code == 1 and "attach one with -a clip.mp4" in output, output
    model = llm.get_model("malmm")
    online = llm.Attachment(type="video/mp4", url="https://example.com/clip.mp4")
    with pytest.raises(llm.ModelError, match="URLs are read by a server only"):
        model.prompt(QUESTION, attachments=[online], model=str(tiny_llama_dir)).text()


def test_without_torch_the_local_model_says_what_to_install(
    clips: Clips, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ModuleNotFoundError
    model = llm.get_model("malmm")
    with pytest.raises(llm.ModelError, match=r"the local model needs torch: pip install 'malmm\[llm\]'"):
        model.prompt(QUESTION, attachments=[llm.Attachment(path=str(clips.short))], model=str(tiny_llama_dir)).text()
