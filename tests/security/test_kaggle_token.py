"""Issue 16.10: a world-readable ``~/.kaggle/access_token`` is flagged, as a 0644
``kaggle.json`` is (the real ``kaggle`` client reads the token file first)."""

from __future__ import annotations

import json


def test_a_world_readable_access_token_is_flagged(orch, orch_home, config, kaggle_emulator, tmp_path, monkeypatch):
    home = tmp_path / "me"
    (home / ".kaggle").mkdir(parents=True)
    token = home / ".kaggle" / "access_token"
    token.write_text("KGAT_0123456789abcdef\n")
    token.chmod(0o644)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    config("platforms: {kaggle: {type: kaggle}}\n")
    r = orch("platforms", "--json")
    [row] = [d for d in json.loads(r.output) if d["name"] == "kaggle"]
    assert any(f"chmod 600 {token}" in p for p in row["problems"]), row
    token.chmod(0o600)
    [row] = [d for d in json.loads(orch("platforms", "--json").output) if d["name"] == "kaggle"]
    assert not any("chmod 600" in p for p in row["problems"]), row
