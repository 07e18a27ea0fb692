"""The test Hub server (tests/fake_hub.py) answers huggingface_hub the way the Hub does.

Other Hub tests rely on it, so its own behaviour is pinned here: upload + snapshot_download round
trip, auth errors, private repos, fault injection.
"""

import pytest


def test_upload_and_snapshot_download_round_trip(fake_hub, tmp_path):
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(token="hf_alice_write")
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("alice/demo", private=True)
    assert str(url).endswith("/alice/demo")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    info = api.upload_folder(repo_id="alice/demo", folder_path=src, commit_message="Add files")
    assert len(info.oid) == 40
    assert sorted(api.list_repo_files("alice/demo")) == [".gitattributes", "a.txt", "sub/b.bin"]
    assert [c.title for c in api.list_repo_commits("alice/demo")] == ["Add files", "initial commit"]
    out = snapshot_download("alice/demo", token="hf_alice_write", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache").exists()
    from pathlib import Path

    assert (Path(out) / "a.txt").read_text() == "hello"
    assert (Path(out) / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 100
    # unchanged files make no new commit; hf_hub_download reads single files
    api.upload_folder(repo_id="alice/demo", folder_path=src, commit_message="Again")
    assert fake_hub.commits_made("alice/demo") == 1
    from huggingface_hub import hf_hub_download

    assert Path(hf_hub_download("alice/demo", "a.txt", token="hf_alice_write", cache_dir=tmp_path / "c2")).read_text() == "hello"


def test_dataset_and_space_repos(fake_hub):
    from huggingface_hub import HfApi

    api = HfApi(token="hf_alice_write")
    api.create_repo("alice/ds", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"x,y\n1,2\n", path_in_repo="data.csv", repo_id="alice/ds", repo_type="dataset")
    assert "data.csv" in api.list_repo_files("alice/ds", repo_type="dataset")
    api.create_repo("alice/sp", repo_type="space", space_sdk="gradio")
    assert api.repo_info("alice/sp", repo_type="space").sdk == "gradio"


def test_auth_errors(fake_hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token="hf_wrong").whoami()
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token="hf_alice_read").create_repo("alice/x")
    assert e.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token="hf_bob_write").create_repo("alice/x")
    assert e.value.response.status_code == 403
    HfApi(token="hf_alice_write").create_repo("alice/secret", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info("alice/secret")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token="hf_bob_write").repo_info("alice/secret")
    assert HfApi(token="hf_alice_read").repo_info("alice/secret").private is True


def test_fault_injection_counts_commits(fake_hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token="hf_alice_write")
    api.create_repo("alice/f")
    fake_hub.fail_commits_before = 1
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_file(path_or_fileobj=b"1", path_in_repo="a", repo_id="alice/f")
    assert e.value.response.status_code == 503
    assert fake_hub.commits_made("alice/f") == 0
    fake_hub.fail_commits_after = 1
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"1", path_in_repo="a", repo_id="alice/f")
    assert fake_hub.commits_made("alice/f") == 1 and fake_hub.commit_posts == 2
