"""The LLaVA importer: a file in LLaVA's exact schema becomes shards holding each image's own bytes and its
turns; bad records are skipped, counted by reason with the record id; a file of only bad records is refused
in one line; a rerun redoes nothing."""

import io
import json

import numpy as np
import pytest
import soundfile
from eg_data import DataError, read_all
from eg_data.llava import LLAVA_REASONS, LlavaConfig, import_llava
from PIL import Image


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def turns(n: int, first: str = "<image>\n") -> list[dict]:
    out = []
    for i in range(n):
        out.append({"from": "human", "value": (first if i == 0 else "") + f"question {i}?"})
        out.append({"from": "gpt", "value": f"answer {i}."})
    return out


@pytest.fixture
def llava(tmp_path):
    """Five good records (LLaVA's schema: COCO-style ids and file names, `<image>\\n` opening the first
    human turn, 2-3 exchanges; one with audio, one text-only) and one bad record of each kind."""
    images = tmp_path / "coco" / "train2017"
    images.mkdir(parents=True)
    good = []
    for i in range(4):
        name = f"0000000{33471 + i}.jpg"
        (images / name).write_bytes(jpeg(i))
        good.append({"id": name[:-4], "image": name, "conversations": turns(2 + i % 2)})
    wave = 0.3 * np.sin(np.linspace(0, 800, 8000)).astype(np.float32)
    soundfile.write(images / "clip.wav", wave, 8000)
    good[1]["audio"] = "clip.wav"
    good[1]["conversations"][0]["value"] = "<image>\n<audio>\nquestion 0?"
    good.append({"id": "text-only", "conversations": turns(2, first="")})
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    bad = [
        {"id": "no-turns", "image": good[0]["image"], "conversations": []},
        {
            "id": "two-humans",
            "image": good[0]["image"],
            "conversations": [turns(1)[0], turns(1)[0], turns(1)[1]],
        },
        {"id": "no-media", "conversations": turns(2)},  # <image>, but no image field
        {
            "id": "robot",
            "image": good[0]["image"],
            "conversations": [turns(1)[0], {"from": "robot", "value": "x"}],
        },
        {"id": "gone", "image": "000000999999.jpg", "conversations": turns(2)},
        {"id": "broken", "image": "broken.jpg", "conversations": turns(2)},
        "not a record",
    ]
    records = good[:2] + bad[:3] + good[2:] + bad[3:]
    path = tmp_path / "llava_instruct.json"
    path.write_text(json.dumps(records))
    return {"path": path, "images": images, "good": good, "out": tmp_path / "shards"}


def test_a_llava_file_imports_with_its_bad_records_counted_by_id(llava) -> None:
    report = import_llava(llava["path"], llava["images"], llava["out"], LlavaConfig(num_workers=1))
    assert report["records"] == 12 and report["ok"] == 5
    expected = {
        "no_turns": 1,
        "turn_order": 1,
        "placeholder_without_media": 1,
        "unknown_role": 1,
        "missing_image": 1,
        "unreadable_image": 1,
        "not_a_record": 1,
    }
    assert report["failed"] == {reason: expected.get(reason, 0) for reason in LLAVA_REASONS}
    assert report["examples"] == {
        "no_turns": "no-turns",
        "turn_order": "two-humans",
        "placeholder_without_media": "no-media",
        "unknown_role": "robot",
        "missing_image": "gone",
        "unreadable_image": "broken",
        "not_a_record": "#11",
    }
    samples = {s["__key__"]: s for s in read_all(llava["out"])}
    assert sorted(samples) == sorted(r["id"].replace("-", "-") for r in llava["good"])
    for record in llava["good"]:
        sample = samples[record["id"]]
        meta = json.loads(sample["json"])
        assert meta["conversations"] == record["conversations"] and meta["id"] == record["id"]
        if "image" in record:
            assert sample["jpg"] == (llava["images"] / record["image"]).read_bytes()
        else:
            assert "jpg" not in sample and "png" not in sample
    wave, rate = soundfile.read(io.BytesIO(samples[llava["good"][1]["id"]]["flac"]))
    assert rate == 16000 and abs(len(wave) - 16000) <= 1
    assert report["turns"] == sum(len(r["conversations"]) for r in llava["good"])
    again = import_llava(llava["path"], llava["images"], llava["out"], LlavaConfig(num_workers=1))
    assert again["shards_written"] == 0 and again["shards_skipped"] == 1 and again["ok"] == 5


def test_a_file_of_only_bad_records_is_refused_in_one_line(llava, tmp_path) -> None:
    only_bad = tmp_path / "bad.json"
    only_bad.write_text(
        json.dumps([{"id": "a", "conversations": []}, {"id": "b", "conversations": turns(1, first="")[:1]}])
    )
    with pytest.raises(DataError) as caught:
        import_llava(only_bad, llava["images"], tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message
    assert "none of its 2 records" in message and "no_turns 1 (e.g. id 'a')" in message
    assert "turn_order 1 (e.g. id 'b')" in message
    files_gone = tmp_path / "gone.json"
    files_gone.write_text(json.dumps([{"id": "x", "image": "nope.jpg", "conversations": turns(2)}]))
    with pytest.raises(DataError, match="missing_image 1 \\(e.g. id 'x'\\)"):
        import_llava(files_gone, llava["images"], tmp_path / "out2", LlavaConfig(num_workers=1))


def test_jsonl_and_unusable_inputs(llava, tmp_path) -> None:
    lines = tmp_path / "records.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in llava["good"][:2]) + "\n")
    report = import_llava(lines, llava["images"], tmp_path / "jl", LlavaConfig(num_workers=1))
    assert report["ok"] == 2
    sliced = import_llava(  # a slice: records 4-5 (a held-out split)
        llava["path"], llava["images"], tmp_path / "sl", LlavaConfig(offset=4, num_samples=2, num_workers=1)
    )
    assert sliced["records"] == 2 and sliced["examples"] == {"placeholder_without_media": "no-media"}
    assert [s["__key__"] for s in read_all(tmp_path / "sl")] == [llava["good"][2]["id"]]
    with pytest.raises(DataError, match="is not a folder"):
        import_llava(lines, tmp_path / "nowhere", tmp_path / "x")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(DataError, match="not an array"):
        import_llava(tmp_path / "dict.json", llava["images"], tmp_path / "x")
    with pytest.raises(DataError, match="num_samples must be >= 0"):
        LlavaConfig(num_samples=-1)
