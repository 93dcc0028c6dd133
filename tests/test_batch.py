"""Finding inputs, naming outputs, stdout in each format."""

from __future__ import annotations

import io
import json
from pathlib import Path

from malmm_cli.batch import Input, StdoutWriter, already_done, expand_inputs, output_collisions
from malmm_cli.results import VideoResult


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_are_searched_recursively_for_videos(tmp_path: Path) -> None:
    touch(tmp_path / "in" / "a.mp4")
    touch(tmp_path / "in" / "deep" / "b.MKV")
    touch(tmp_path / "in" / "notes.txt")
    touch(tmp_path / "in" / ".hidden" / "c.mp4")
    touch(tmp_path / "in" / "._a.mp4")  # macOS resource fork
    explicit = touch(tmp_path / "song.m4a")  # an explicit file is tried whatever its extension
    inputs, failures = expand_inputs([tmp_path / "in", explicit, tmp_path / "in" / "a.mp4"])
    assert [(i.path.name, str(i.stem)) for i in inputs] == [("a.mp4", "a"), ("b.MKV", "deep/b"), ("song.m4a", "song")]
    assert failures == []


def test_missing_paths_are_kept_to_fail_later_and_empty_folders_fail(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    inputs, failures = expand_inputs([tmp_path / "missing.mp4", tmp_path / "empty"])
    assert [i.path.name for i in inputs] == ["missing.mp4"]
    assert len(failures) == 1 and failures[0].status == "failed" and "no video files" in failures[0].detail


def test_collisions_are_found(tmp_path: Path) -> None:
    inputs = [Input(tmp_path / "a" / "clip.mp4", Path("clip")), Input(tmp_path / "b" / "clip.mov", Path("clip"))]
    assert output_collisions(inputs) == [f"{inputs[0].path} and {inputs[1].path}"]
    assert output_collisions(inputs[:1]) == []


def test_already_done_needs_every_format(tmp_path: Path) -> None:
    item = Input(tmp_path / "clip.mp4", Path("clip"))
    touch(tmp_path / "out" / "clip.json")
    assert already_done(item, tmp_path / "out", ["json"])
    assert not already_done(item, tmp_path / "out", ["json", "srt"])
    assert not already_done(item, None, ["json"])


def result(name: str) -> VideoResult:
    return VideoResult(name, "caption", 4.0, 2, 0.0, 3.0, caption=f"caption of {name}")


def test_stdout_json_is_an_object_for_one_file_and_a_list_otherwise() -> None:
    single = io.StringIO()
    writer = StdoutWriter("json", single=True, stream=single)
    writer.add(result("a.mp4"))
    writer.close()
    assert json.loads(single.getvalue())["caption"] == "caption of a.mp4"
    several = io.StringIO()
    writer = StdoutWriter("json", single=False, stream=several)
    writer.add(result("a.mp4"))
    writer.add(result("b.mp4"))
    writer.close()
    assert [d["file"] for d in json.loads(several.getvalue())] == ["a.mp4", "b.mp4"]
    empty = io.StringIO()
    StdoutWriter("json", single=False, stream=empty).close()
    assert json.loads(empty.getvalue()) == []


def test_stdout_streams_jsonl_csv_and_txt() -> None:
    for fmt, check in (
        ("jsonl", lambda text: [json.loads(line)["file"] for line in text.splitlines()] == ["a.mp4", "b.mp4"]),
        ("csv", lambda text: text.count("file,task,start") == 1 and text.count("caption of") == 2),
        ("txt", lambda text: text.startswith("# a.mp4\ncaption of a.mp4\n") and "\n# b.mp4\n" in text),
    ):
        stream = io.StringIO()
        writer = StdoutWriter(fmt, single=False, stream=stream)
        writer.add(result("a.mp4"))
        writer.add(result("b.mp4"))
        writer.close()
        assert check(stream.getvalue()), (fmt, stream.getvalue())
