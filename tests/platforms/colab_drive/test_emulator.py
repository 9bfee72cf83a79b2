"""The fake Drive speaks the protocol the real client speaks (raw client calls, no orch code)."""

from __future__ import annotations

import io
import os
import time

import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaInMemoryUpload, MediaIoBaseDownload, MediaIoBaseUpload, build_http

FOLDER = "application/vnd.google-apps.folder"


def _create(service, name, parent="root", data=None, **props):
    body = {"name": name, "parents": [parent], "properties": props}
    if data is None:
        body["mimeType"] = FOLDER
        return service.files().create(body=body, fields="id").execute()["id"]
    media = MediaInMemoryUpload(data, mimetype="application/octet-stream", resumable=False)
    return service.files().create(body=body, media_body=media, fields="id").execute()["id"]


def test_multipart_upload_round_trips_binary_content_byte_for_byte(service):
    # Line breaks and boundary-like bytes must survive the multipart parser.
    data = b"--===============\r\n\n\r" + os.urandom(4096) + b"\n--\r\n"
    file_id = _create(service, "blob.bin", data=data)
    assert service.files().get_media(fileId=file_id).execute() == data


def test_resumable_upload_gets_308_with_range_then_the_file(service, drive):
    data = os.urandom(3 * 256 * 1024 + 17)
    media = MediaIoBaseUpload(io.BytesIO(data), mimetype="application/octet-stream",
                              chunksize=256 * 1024, resumable=True)
    req = service.files().create(body={"name": "r.bin"}, media_body=media, fields="id,size,sha256Checksum")
    progress, response = [], None
    while response is None:
        status, response = req.next_chunk()
        if status:
            progress.append(status.resumable_progress)
    assert progress == [256 * 1024, 512 * 1024, 768 * 1024]
    assert response["size"] == str(len(data))
    assert drive.count("chunk", status=308) == 3 and drive.count("create-resumable") == 1


def test_a_non_final_chunk_that_is_not_a_256k_multiple_is_refused(service):
    media = MediaIoBaseUpload(io.BytesIO(os.urandom(300_000)), mimetype="application/octet-stream",
                              chunksize=100_000, resumable=True)
    req = service.files().create(body={"name": "odd.bin"}, media_body=media)
    with pytest.raises(HttpError) as err:
        req.next_chunk()
    assert err.value.resp.status == 400


def test_status_query_reports_what_the_server_stored(service, drive):
    media = MediaIoBaseUpload(io.BytesIO(os.urandom(2 * 256 * 1024 + 5)), mimetype="application/octet-stream",
                              chunksize=256 * 1024, resumable=True)
    req = service.files().create(body={"name": "q.bin"}, media_body=media, fields="id")
    req.next_chunk()
    req._in_error_state = True  # as after a failed chunk: the client asks before sending more
    status, _ = req.next_chunk()
    assert drive.count("status") == 1 and status.resumable_progress == 2 * 256 * 1024


def test_range_download_gets_206_and_an_empty_file_gets_416(service):
    data = os.urandom(700_000)
    file_id = _create(service, "d.bin", data=data)
    buf = io.BytesIO()
    down = MediaIoBaseDownload(buf, service.files().get_media(fileId=file_id), chunksize=256 * 1024)
    done = False
    while not done:
        _, done = down.next_chunk()
    assert buf.getvalue() == data
    empty = _create(service, "e.bin", data=b"")
    down = MediaIoBaseDownload(io.BytesIO(), service.files().get_media(fileId=empty))
    assert down.next_chunk()[1] is True


def test_list_understands_the_q_operators_orch_uses(service):
    parent = _create(service, "p")
    a = _create(service, "a'b.json", parent, data=b"1", orch_kind="ticket", orch_key="k1")
    _create(service, "b.json", parent, data=b"2", orch_kind="ticket", orch_key="k2")
    _create(service, "sub", parent)
    files = service.files()

    def names(q):
        return sorted(f["name"] for f in files.list(q=q, fields="files(name)").execute()["files"])

    base = f"'{parent}' in parents and trashed = false"
    assert names(base) == ["a'b.json", "b.json", "sub"]
    assert names(base + f" and mimeType = '{FOLDER}'") == ["sub"]
    assert names(base + f" and mimeType != '{FOLDER}' and name contains '.json'") == ["a'b.json", "b.json"]
    assert names(base + " and name = 'a\\'b.json'") == ["a'b.json"]
    assert names(base + " and properties has { key='orch_key' and value='k2' }") == ["b.json"]
    assert names(base + " and (name = 'sub' or not properties has { key='orch_kind' and value='ticket' })") == ["sub"]
    assert names(base + " and modifiedTime > '2000-01-01T00:00:00'") == ["a'b.json", "b.json", "sub"]
    assert names(base + " and modifiedTime < '2000-01-01T00:00:00'") == []
    with pytest.raises(HttpError) as err:
        files.list(q="nonsense ~ 1").execute()
    assert err.value.resp.status == 400
    assert a


def test_list_pages_with_page_tokens(service):
    parent = _create(service, "many")
    for i in range(5):
        _create(service, f"f{i}", parent, data=b"x")
    req = service.files().list(q=f"'{parent}' in parents", pageSize=2, fields="nextPageToken, files(name)")
    seen = []
    while req is not None:
        resp = req.execute()
        seen += [f["name"] for f in resp["files"]]
        req = service.files().list_next(req, resp)
    assert seen == [f"f{i}" for i in range(5)]


def test_fields_are_honoured_and_default_to_the_basic_four(service):
    file_id = _create(service, "x", data=b"abc", orch_kind="blob")
    assert set(service.files().get(fileId=file_id).execute()) == {"kind", "id", "name", "mimeType"}
    got = service.files().get(fileId=file_id, fields="id,size,properties").execute()
    assert got == {"id": file_id, "size": "3", "properties": {"orch_kind": "blob"}}


def test_update_patches_properties_and_a_null_value_deletes_a_key(service):
    file_id = _create(service, "x", data=b"abc", a="1", b="2")
    got = service.files().update(fileId=file_id, body={"properties": {"a": None, "c": "3"}},
                                 fields="properties").execute()
    assert got["properties"] == {"b": "2", "c": "3"}


def test_app_properties_are_private_to_the_oauth_client_that_wrote_them(drive):
    drive.access_tokens["other-token"] = "another-client"
    mine = build("drive", "v3", credentials=Credentials(token="test-token"),
                 client_options={"api_endpoint": drive.api_endpoint}, static_discovery=True)
    theirs = build("drive", "v3", credentials=Credentials(token="other-token"),
                   client_options={"api_endpoint": drive.api_endpoint}, static_discovery=True)
    file_id = mine.files().create(body={"name": "t", "appProperties": {"k": "v"}, "properties": {"p": "v"}},
                                  fields="id").execute()["id"]
    assert theirs.files().get(fileId=file_id, fields="appProperties,properties").execute() == {
        "appProperties": {}, "properties": {"p": "v"}}
    q = "appProperties has { key='k' and value='v' }"
    assert theirs.files().list(q=q).execute()["files"] == []
    assert len(mine.files().list(q=q).execute()["files"]) == 1


def test_deleting_a_folder_deletes_what_is_inside(service, drive):
    parent = _create(service, "p")
    child = _create(service, "c", parent, data=b"1")
    service.files().delete(fileId=parent).execute()
    with pytest.raises(HttpError) as err:
        service.files().get(fileId=child).execute()
    assert err.value.resp.status == 404 and drive.find("c") == []


def test_a_bad_token_gets_401_with_drive_error_body(drive):
    # google-auth would refresh on 401, so look at the raw reply.
    resp, content = build_http().request(drive.api_endpoint + "files", "GET",
                                         headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    err = HttpError(resp, content)
    assert "invalid authentication" in err.reason and err.error_details[0]["reason"] == "authError"


def test_uploads_need_the_http_fix_against_an_http_endpoint(drive):
    # The pitfall from notes §5.2.1: without orch's request builder the client sends
    # uploads to https://127.0.0.1:PORT and fails the TLS handshake.
    svc = build("drive", "v3", http=build_http(), client_options={"api_endpoint": drive.api_endpoint},
                static_discovery=True)
    media = MediaInMemoryUpload(b"x", mimetype="text/plain", resumable=False)
    with pytest.raises(Exception) as err:
        svc.files().create(body={"name": "x"}, media_body=media).execute()
    assert "SSL" in type(err.value).__name__ or "SSL" in str(err.value)


def test_with_list_lag_a_new_file_is_missing_from_listings_but_gettable_by_id(service, drive):
    drive.list_lag = 0.5
    file_id = _create(service, "late")
    q = "name = 'late' and trashed = false"
    assert service.files().list(q=q).execute()["files"] == []
    assert service.files().get(fileId=file_id, fields="id").execute()["id"] == file_id
    time.sleep(0.6)
    assert [f["id"] for f in service.files().list(q=q).execute()["files"]] == [file_id]


def test_a_commit_fault_makes_the_change_then_answers_the_error(service, drive):
    drive.inject("error", method="POST", path="/drive/v3/files", commit=True, status=500)
    with pytest.raises(HttpError) as err:
        _create(service, "made-anyway")
    assert err.value.resp.status == 500
    assert [f.name for f in drive.find("made-anyway")] == ["made-anyway"]
