"""What is refused before anything is encoded or written, in one line naming the option: an encoder the Hub cannot
give while offline, an output folder that is (or sits in) a file."""
import pytest

from smec_hf.pipelines.preflight import check_base_model, check_output_dir


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline Hub whose local cache holds one model, ``some-org/cached``."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--cached" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--some-org--cached" / "refs").mkdir()
    (cache / "models--some-org--cached" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_offline_only_a_hub_id_without_a_cached_copy_is_refused(offline_hub, tmp_path):
    check_base_model("some-org/cached")              # what an offline load would find
    check_base_model(str(tmp_path))                   # a local folder
    check_base_model(None)                            # the packaged default
    with pytest.raises(FileNotFoundError, match=r"^--base-model some-org/other: not a local folder, and the Hub is "
                                                r"offline"):
        check_base_model("some-org/other")
    with pytest.raises(FileNotFoundError, match=r"no-such-folder: no such folder$"):
        check_base_model(str(tmp_path / "no-such-folder"))


def test_an_output_folder_that_is_or_sits_in_a_file_is_named(tmp_path):
    check_output_dir(tmp_path / "new" / "run", "--output")    # to be created
    check_output_dir(tmp_path, "--output")                     # an existing folder
    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(FileExistsError, match=r"^--output .*taken is an existing file, not a folder"):
        check_output_dir(taken, "--output")
    with pytest.raises(FileExistsError, match=r"^--cache-dir .*taken/cache: .*taken is a file, not a folder"):
        check_output_dir(taken / "cache", "--cache-dir")
