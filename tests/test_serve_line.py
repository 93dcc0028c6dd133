"""The line for the model in `malmm serve`: requests that wait together are read together (in the
command line's lockstep batches, with the answers they get alone), a second request about a video
skips decoding and the vision encoder, and a client that goes away stops its work."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import media

httpx = pytest.importorskip("httpx")
pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.serving import Clips, Log, Running, make_clips, start, video  # noqa: E402


class Gate:
    """The real service, whose first batch waits until released (so that others line up behind
    it); it keeps each batch's jobs."""

    def __init__(self, service) -> None:
        self.service = service
        self.model_id, self.device, self.defaults = service.model_id, service.device, service.defaults
        self.release = threading.Event()
        self.batches: list[list] = []

    def together(self, request):
        return self.service.together(request)

    def answer(self, jobs) -> None:
        self.batches.append(list(jobs))
        if len(self.batches) == 1:
            self.release.wait(30)
        self.service.answer(jobs)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return make_clips(tmp_path_factory.mktemp("line"))


@pytest.fixture(scope="module")
def service(tiny_llama_dir: Path):
    from malmm_cli.jobs.model import RunOptions
    from malmm_cli.jobs.serve import load_service

    options = RunOptions(model=str(tiny_llama_dir), device="cpu", num_beams=1, max_new_tokens=5)
    return load_service(options, Log())


@pytest.fixture
def gated(service, clips: Clips) -> Iterator[tuple[Running, Gate]]:
    from malmm_cli.jobs.server.app import Limits, create_app

    gate, log = Gate(service), Log()
    for url in start(create_app(gate, Limits(allowed=(clips.allowed.resolve(),), queue=8), log)):
        yield Running(url, None, log), gate
    gate.release.set()


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.02)


def health(served: Running) -> dict:
    return httpx.get(f"{served.url}/health").json()


def test_requests_waiting_together_are_read_together_with_the_answers_they_get_alone(
    gated: tuple[Running, Gate], clips: Clips
) -> None:
    served, gate = gated
    other = media.make_video(clips.allowed / "other.mp4", seconds=2, fps=10, size=(64, 48), seed=7)
    first = {"model": "x", "messages": video(str(clips.short), "first?"), "frames": 4}
    together = [
        {"model": "x", "messages": video(str(clips.short), "what is it?"), "frames": 4},
        {"model": "x", "messages": video(str(other), "what is it?"), "frames": 4},
        {"model": "x", "messages": video(str(other), "and then?"), "frames": 4},
    ]
    alone = {"model": "x", "messages": video(str(other), "what is it?"), "frames": 3}  # other sampling
    answers: dict[int, httpx.Response] = {}

    def ask(number: int, body: dict) -> None:
        answers[number] = served.post(body, key=None)

    threads = [threading.Thread(target=ask, args=(0, first))]
    threads[0].start()
    wait_for(lambda: health(served)["reading"] == 1)
    for number, body in enumerate([*together, alone], start=1):  # in this order: each in line before the next
        threads.append(threading.Thread(target=ask, args=(number, body)))
        threads[-1].start()
        wait_for(lambda number=number: health(served)["queued"] == number)
    gate.release.set()
    for thread in threads:
        thread.join(120)
    assert [len(batch) for batch in gate.batches] == [1, 3, 1]
    assert [job.request.options.frames for job in gate.batches[2]] == [3]
    for number, body in enumerate([first, *together, alone]):
        assert answers[number].status_code == 200, answers[number].text
        by_itself = served.post(body, key=None).json()  # the line is empty now: read alone
        assert answers[number].json()["choices"] == by_itself["choices"]
        assert answers[number].json()["malmm"] == by_itself["malmm"]
    assert [len(batch) for batch in gate.batches[3:]] == [1] * 5  # each asked again, alone


def test_a_second_request_about_a_video_skips_decoding_and_vision(
    service, gated: tuple[Running, Gate], clips: Clips, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feature cache is keyed by the video's bytes: the same clip sent again, even uploaded
    under another name, is neither decoded nor encoded again."""
    from malmm_cli.reading import stream as stream_module

    served, gate = gated
    gate.release.set()
    clip = media.make_video(clips.allowed / "twice.mp4", seconds=4, fps=8, size=(48, 32), seed=11)
    calls = {"probe": 0, "encode": 0}

    def counted(name: str, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(stream_module, "probe", counted("probe", stream_module.probe))
    monkeypatch.setattr(service.malmm, "encode_frames", counted("encode", service.malmm.encode_frames))
    asked = {"model": "x", "messages": video(str(clip), "what is it?"), "frames": 6}
    first = served.post(asked, key=None)
    assert first.status_code == 200 and calls["probe"] >= 1 and calls["encode"] >= 1, (first.text, calls)
    calls.update(probe=0, encode=0)
    uploaded = f"data:video/mp4;base64,{base64.b64encode(clip.read_bytes()).decode()}"
    for url in (str(clip), uploaded):
        again = served.post({**asked, "messages": video(url, "what is it?")}, key=None)
        assert again.json()["choices"] == first.json()["choices"]
    assert calls == {"probe": 0, "encode": 0}


def test_a_streaming_client_that_goes_away_stops_its_reading(gated: tuple[Running, Gate], clips: Clips) -> None:
    served, gate = gated
    gate.release.set()
    long = media.make_video(clips.allowed / "long.mp4", seconds=60, fps=10, size=(32, 24))
    body = {"model": "x", "messages": video(str(long), "what is it?"), "frames": 600, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith(": read 2 of"):
                break  # and the connection closes
    wait_for(lambda: gate.batches and gate.batches[-1][0].answer.done())
    (job,) = gate.batches[-1]
    from malmm_cli.reading.pipeline import Stopped

    stopped = job.answer.exception()
    assert isinstance(stopped, Stopped), stopped
    read = int(str(stopped).split()[2])  # "stopped after N frames: ..."
    assert 2 <= read < 600
    assert any("the client went away" in line for line in served.log.infos)
    assert served.log.errors == []
    wait_for(lambda: health(served)["reading"] == 0)


def test_a_waiting_client_that_goes_away_leaves_the_line(gated: tuple[Running, Gate], clips: Clips) -> None:
    """A request still waiting for the model is dropped as soon as its client leaves: it is never
    read, and its place in the line is free again."""
    served, gate = gated
    first = threading.Thread(target=served.post, args=({"model": "x", "messages": video(str(clips.short)),
                                                        "frames": 2},), kwargs={"key": None})  # fmt: skip
    first.start()
    wait_for(lambda: health(served)["reading"] == 1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served.url}/v1/chat/completions", json={"model": "x", "messages": video(str(clips.short), "q?"),
                   "frames": 2}, timeout=1.0)  # fmt: skip
    wait_for(lambda: health(served)["queued"] == 0)
    gate.release.set()
    first.join(30)
    wait_for(lambda: health(served)["reading"] == 0)
    assert [len(batch) for batch in gate.batches] == [1]
    assert any("the client went away" in line for line in served.log.infos)


def test_a_streamed_answer_comes_word_by_word_as_it_is_generated(gated: tuple[Running, Gate], clips: Clips) -> None:
    """Greedy decoding (num_beams 1): the answer's words come in several chunks, together the
    answer; beam search knows no word for sure until it ends, so its answer comes in one chunk."""
    served, gate = gated
    gate.release.set()
    for beams, several in ((1, True), (2, False)):
        asked = {"model": "x", "messages": video(str(clips.short), "what is it?"), "frames": 3, "max_tokens": 24,
                 "num_beams": beams}  # fmt: skip
        whole = served.post(asked, key=None).json()["choices"][0]["message"]["content"]
        assert " " in whole  # the tiny model's words: several
        with httpx.stream("POST", f"{served.url}/v1/chat/completions", json={**asked, "stream": True},
                          timeout=60) as response:  # fmt: skip
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: {")]
        parts = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[1:-1]]
        assert "".join(parts) == whole
        assert (len(parts) > 1) is several, parts


def test_answers_told_as_they_grow_end_as_the_answers(tiny_malmm) -> None:
    """models.generation: each video's text so far, at every greedy step, ends as its answer."""
    import torch

    from models import GenerationSettings

    torch.manual_seed(0)
    queries = torch.randn(
        2, tiny_malmm.model.config.num_query_tokens, tiny_malmm.model.config.qformer_config.hidden_size
    )
    settings = GenerationSettings(max_new_tokens=12, num_beams=1)
    told: dict[int, list[str]] = {0: [], 1: []}
    answers = tiny_malmm.generate_beams(
        queries, ["what?", "and then?"], settings, lambda row, text: told[row].append(text)
    )
    assert [texts[0] for texts in answers] == [told[0][-1], told[1][-1]]
    assert len(told[0]) == len(told[1]) > 1
    assert tiny_malmm.generate_beams(queries, ["what?", "and then?"], settings) == answers
