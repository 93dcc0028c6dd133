"""`malmm serve`: the real server (uvicorn on a free loopback port, the tiny random model) spoken to
with the official `openai` client and with httpx; its answers equal the command line's for the
same clip and options, and every refusal is one of OpenAI's error objects."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.serving import KEY, Clips, Log, Running, make_clips, serve_tiny, start, video  # noqa: E402

QUESTION = "what is the man doing?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return make_clips(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def served(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    yield from serve_tiny(tiny_llama_dir, clips)


def cli_json(run, *args: object) -> dict:
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    data.pop("file")
    return data


def without_file(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in ("file", "upload")}


def test_a_caption_equals_malmm_caption(served: Running, clips: Clips, run) -> None:
    reply = served.client().chat.completions.create(
        model="tiny", messages=video(str(clips.short)), extra_body={"frames": 4, "segment": "1s"}
    )
    cli = run("caption", clips.short, "--frames", "4", "--segment", "1s")
    assert cli.exit_code == 0, cli.stderr
    assert reply.choices[0].message.content == cli.stdout.rstrip("\n")  # what `-f txt` prints
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    record = reply.model_extra["malmm"]
    assert record["file"] == str(clips.short)
    assert without_file(record) == cli_json(run, "caption", clips.short, "--frames", "4", "--segment", "1s")
    assert len(record["segments"]) == 3
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_question_equals_malmm_ask(served: Running, clips: Clips, run) -> None:
    """The text is the question; vLLM's mm_processor_kwargs.num_frames is frames."""
    reply = served.client().chat.completions.create(
        model="tiny",
        messages=video(clips.short.as_uri(), QUESTION),
        extra_body={"mm_processor_kwargs": {"num_frames": 4}},
    )
    expected = cli_json(run, "ask", clips.short, QUESTION, "--frames", "4")
    assert without_file(reply.model_extra["malmm"]) == expected
    assert reply.choices[0].message.content == expected["answers"][0]["answer"]


def test_labels_are_ranked_as_malmm_predict_ranks_them(served: Running, clips: Clips, run, tmp_path: Path) -> None:
    labels = ["cooking", "dancing", "riding a bike"]
    response = served.post({"model": "tiny", "messages": video(str(clips.short)), "frames": 4,
                            "malmm": {"task": "predict", "labels": labels, "top_k": 2}})  # fmt: skip
    assert response.status_code == 200, response.text
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    expected = cli_json(run, "predict", clips.short, "--labels", tmp_path / "labels.txt", "--frames", "4", "-k", "2")
    assert without_file(response.json()["malmm"]) == expected
    assert len(expected["labels"]) == 2


def test_streaming_sends_the_same_answer_in_openai_chunks(served: Running, clips: Clips) -> None:
    asked = {"model": "tiny", "messages": video(str(clips.short), QUESTION), "extra_body": {"frames": 4}}
    whole = served.client().chat.completions.create(**asked)
    chunks = list(served.client().chat.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens and not chunks[-1].choices
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json={**asked["extra_body"], "stream": True,
                      "model": "tiny", "messages": asked["messages"]}, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert ": read 4 of 4 frames" in lines and lines[-1] == "data: [DONE]"  # progress as SSE comments
    assert json.loads(lines[-2].removeprefix("data: "))["malmm"]["frames"] == 4


def test_an_upload_is_read_and_removed(served: Running, clips: Clips) -> None:
    data = base64.b64encode(clips.short.read_bytes()).decode()
    asked = {"model": "tiny", "messages": video(f"data:video/mp4;base64,{data}"), "frames": 4}
    response = served.post(asked)
    assert response.status_code == 200, response.text
    from_path = served.post({**asked, "messages": video(str(clips.short))}).json()
    assert response.json()["choices"] == from_path["choices"]
    assert response.json()["malmm"]["upload"] == {"type": "video/mp4", "bytes": clips.short.stat().st_size}
    assert list(served.app.state.uploads.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "status", "code"),
    [
        ("outside", 403, "path_not_allowed"),  # a path outside every --allow-dir
        ("link", 403, "path_not_allowed"),  # a link in the folder to a file outside it
        ("dotdot", 403, "path_not_allowed"),  # allowed/../elsewhere/outside.mp4
        ("relative", 400, "invalid_path"),
        ("missing", 400, "video_not_found"),
        ("remote", 400, "remote_url_refused"),
        ("host", 400, "invalid_url"),  # file://elsewhere/...
    ],
)
def test_videos_the_server_must_not_read(served: Running, clips: Clips, where: str, status: int, code: str) -> None:
    url = {
        "outside": str(clips.outside), "link": str(clips.link),
        "dotdot": f"{clips.allowed}/../{clips.outside.parent.name}/{clips.outside.name}",
        "relative": "short.mp4", "missing": str(clips.allowed / "missing.mp4"),
        "remote": "https://example.com/clip.mp4", "host": f"file://elsewhere{clips.short}",
    }[where]  # fmt: skip
    response = served.post({"model": "tiny", "messages": video(url)})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    if status == 403:  # said without telling whether the file exists
        assert "is not under a folder this server reads" in error["message"]


def test_the_openai_client_raises_openai_errors(served: Running, clips: Clips) -> None:
    with pytest.raises(openai.PermissionDeniedError, match="not under a folder"):
        served.client().chat.completions.create(model="tiny", messages=video(str(clips.link)))
    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        served.client("wrong").chat.completions.create(model="tiny", messages=video(str(clips.short)))
    with pytest.raises(openai.BadRequestError, match="one video per request"):
        two = [{"role": "user", "content": video(str(clips.short))[0]["content"] * 2}]
        served.client().chat.completions.create(model="tiny", messages=two)


def test_the_api_key_is_required_but_not_for_health(served: Running, clips: Clips) -> None:
    for key in (None, "wrong"):
        response = served.post({"model": "tiny", "messages": video(str(clips.short))}, key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    models = httpx.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [model["id"] for model in models["data"]] == [served.client().models.list().data[0].id]
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["queued"] == 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "must be a JSON object"),
        ('{"model": "tiny", "messages": []}', 400, "messages must be a non-empty list"),
        ("x" * (1024 * 1024 + 1), 413, "larger than this server takes"),
    ],
)
def test_malformed_requests(served: Running, body: str, status: int, message: str) -> None:
    response = served.post(body)
    assert response.status_code == status and message in response.json()["error"]["message"]


def test_a_body_of_undeclared_length_is_cut_at_the_limit(served: Running) -> None:
    """Chunked, with no Content-Length to refuse it by: counted as it comes."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": "'
        for _ in range(3):
            yield b"x" * 512 * 1024

    response = served.post(chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413 and "--max-body" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "message", "cli"),
    [  # the command line's own words, with the request's field names
        ({"frames": 0}, "Invalid value for 'frames': must be 1 or more, not 0", ["--frames", "0"]),
        ({"fps": -1}, "Invalid value for 'fps': must be a positive number of frames per second, not -1",
         ["--fps", "-1"]),
        ({"frames": 4, "fps": 2}, "give frames or fps, not both", ["--frames", "4", "--fps", "2"]),
        ({"segment": "soon"}, "invalid duration 'soon'", ["--segment", "soon"]),
        ({"memory": "concat", "frames": 50}, "concat keeps every frame, at most the memory bank length (40)",
         ["--memory", "concat", "--frames", "50"]),
        ({"frames": 4, "mm_processor_kwargs": {"num_frames": 5}}, "frames is given twice", None),
        ({"malmm": {"labels": ["a"]}, "segment": 2}, "segment is for the caption task, not predict", None),
        ({"malmm": {"frame": 4}}, "malmm has no field 'frame'", None),
        ({"n": 2}, "n must be 1", None),
    ],
)  # fmt: skip
def test_options_are_checked_as_the_command_line_checks_them(
    served: Running, clips: Clips, run, fields: dict, message: str, cli: list[str] | None
) -> None:
    response = served.post({"model": "tiny", "messages": video(str(clips.short)), **fields})
    assert response.status_code == 400 and message in response.json()["error"]["message"], response.text
    if cli is not None:
        result = run("caption", clips.short, *cli)
        assert result.exit_code == 2
        said = " ".join(result.stderr.split())  # click wraps its message
        assert message.replace("frames or fps", "--frames or --fps").split(": ", 1)[-1][:40] in said


def test_contents_the_server_refuses(served: Running, clips: Clips) -> None:
    cases = [
        ([{"role": "user", "content": "hello"}], "no video"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "text, video_url and image_url"),
        (video(str(clips.short)), None),  # then one that works: the server is still serving
    ]
    for messages, message in cases:
        response = served.post({"model": "tiny", "messages": messages, "frames": 2})
        if message is None:
            assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
        else:
            assert response.status_code == 400 and message in response.json()["error"]["message"]
    wrong_type = served.post("{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["error"]["message"]
    nowhere = httpx.get(f"{served.url}/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"
    assert served.log.errors == []


class Blocking:
    """A model that answers when told to, or fails: to fill the line and to fail unforeseen."""

    model_id, device = "blocking", "cpu"

    def __init__(self) -> None:
        from malmm_cli.jobs.model import RunOptions

        self.defaults = RunOptions()
        self.release = threading.Event()
        self.fail = False

    def together(self, request) -> int:
        return id(request)  # each read alone

    def answer(self, jobs) -> None:
        from malmm_cli.jobs.server.service import Reply
        from malmm_cli.reading.results import VideoResult

        self.release.wait(30)
        if self.fail:
            raise RuntimeError("secret detail\nTraceback (most recent call last)")
        for job in jobs:
            result = VideoResult(str(job.video), "caption", 3.0, 4, 0.0, 2.0, caption="done")
            job.answer.set_result(Reply(result, "done", {}))


@pytest.fixture
def blocking(clips: Clips) -> Iterator[tuple[Running, Blocking]]:
    from malmm_cli.jobs.server.app import Limits, create_app

    model, log = Blocking(), Log()
    for url in start(create_app(model, Limits(allowed=(clips.allowed.resolve(),), queue=1), log)):
        yield Running(url, None, log), model
    model.release.set()


def test_a_full_queue_is_answered_429_with_retry_after(blocking: tuple[Running, Blocking], clips: Clips) -> None:
    served, model = blocking
    asked = {"model": "x", "messages": video(str(clips.short))}
    answers: list[httpx.Response] = []
    waiting = [threading.Thread(target=lambda: answers.append(served.post(asked, key=None))) for _ in range(2)]
    for thread in waiting:  # one is read, one waits: the line (--queue 1) is full
        thread.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{served.url}/health").json()["queued"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    refused = served.post(asked, key=None)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"
    # asked before the video is fetched: a remote URL (off on this server, else downloaded) is not looked at
    remote = served.post({"model": "x", "messages": video("http://127.0.0.1:9/clip.mp4")}, key=None)
    assert remote.status_code == 429, remote.text
    model.release.set()
    for thread in waiting:
        thread.join(10)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert served.post(asked, key=None).json()["choices"][0]["message"]["content"] == "done"


def test_an_unforeseen_failure_is_a_plain_500(blocking: tuple[Running, Blocking], clips: Clips) -> None:
    served, model = blocking
    model.fail = True
    model.release.set()
    for stream in (False, True):
        response = served.post({"model": "x", "messages": video(str(clips.short)), "stream": stream}, key=None)
        text = response.text
        assert "secret detail" not in text and "Traceback" not in text
        assert "the server failed to answer" in text
    assert served.log.errors and "RuntimeError: secret detail" in served.log.errors[0]


def test_parse_chat_from_python() -> None:
    """The job's request reading, without a server: the task and options a body asks for."""
    from malmm_cli.jobs.model import RunOptions
    from malmm_cli.jobs.server.chat import ApiError, parse_chat

    body = {"messages": video("/v/clip.mp4", " why? "), "fps": "2", "max_tokens": 7}
    asked = parse_chat(body, RunOptions(num_beams=1))
    assert asked.task.name == "ask" and asked.task.request == {"questions": ["why?"]}
    assert (asked.options.fps, asked.options.max_new_tokens, asked.options.num_beams) == (2.0, 7, 1)
    lmms_eval = parse_chat({"messages": video("/v/clip.mp4"), "media_io_kwargs": {"video": {"num_frames": 6}}},
                           RunOptions())  # fmt: skip
    assert lmms_eval.options.frames == 6  # lmms-eval's max_frames_num, where vLLM reads it
    with pytest.raises(ApiError, match="frames is given twice"):
        parse_chat({"messages": video("/v/clip.mp4"), "frames": 4, "media_io_kwargs": {"video": {"num_frames": 6}}},
                   RunOptions())  # fmt: skip
    labels = parse_chat({"messages": video("/v/clip.mp4"), "malmm": {"labels": ["a", "b", "a"]}}, RunOptions())
    assert labels.task.name == "predict" and labels.task.request["labels"] == ["a", "b"]
    with pytest.raises(ApiError, match="the caption task reads no question"):
        parse_chat({"messages": video("/v/clip.mp4", "why?"), "malmm": {"task": "caption"}}, RunOptions())


def _fresh(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_the_command_line_loads_no_web_framework_nor_torch() -> None:
    heavy = "{'torch', 'fastapi', 'uvicorn', 'starlette'}"
    done = _fresh("import sys, malmm_cli.cli, malmm_cli.commands.serve, malmm_cli.jobs.serve\n"
                  f"print(' '.join(sorted({heavy} & set(sys.modules))))")  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_what_needs_no_model_is_refused_before_torch(tmp_path: Path) -> None:
    """Listening beyond loopback without a key, and a missing --allow-dir folder: status 2, said
    before torch (or FastAPI) is imported."""
    code = (
        "import sys\nfrom malmm_cli.cli import main\n"
        f"for args in (['--host', '0.0.0.0'], ['--allow-dir', {str(tmp_path / 'nowhere')!r}]):\n"
        "    sys.argv = ['malmm', 'serve', *args]\n"
        "    try:\n        main()\n    except SystemExit as end:\n"
        "        print(end.code, 'torch' in sys.modules, 'fastapi' in sys.modules)"
    )
    done = _fresh(code, env={"MALMM_API_KEY": ""})
    assert done.stdout.split() == ["2", "False", "False"] * 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert "--host 0.0.0.0 lets other machines use the model: give --api-key KEY" in said
    assert "nowhere: no such folder" in said


def test_malmm_serve_answers_then_stops_on_sigterm(tiny_llama_dir: Path, clips: Clips) -> None:
    """The command itself: loads, says where it listens, answers, and stops on SIGTERM with 143."""
    command = [sys.executable, "-m", "malmm_cli", "serve", "--model", str(tiny_llama_dir), "--device", "cpu",
               "--port", "0", "--allow-dir", str(clips.allowed), "--num-beams", "1",
               "--max-new-tokens", "3"]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MALMM_API_KEY": ""})  # fmt: skip
    try:
        url = None
        for line in server.stderr:
            if line.startswith("Serving "):
                url = line.split(" at ")[1].split("/v1")[0]
                break
        assert url, "the server never said where it listens"
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "x", "messages": video(str(clips.short)),
                              "frames": 2}, timeout=60)  # fmt: skip
        assert response.status_code == 200 and response.json()["malmm"]["frames"] == 2
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 143
        assert "Terminated: the server stopped." in server.stderr.read()
    finally:
        server.kill()
        server.wait()
